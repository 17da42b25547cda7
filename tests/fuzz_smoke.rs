//! The fuzz targets (`fuzz/`) on stable Rust: for each, a fixed seed corpus
//! and a fixed number of deterministic mutations of it, fed to the same
//! entry points (`multiproc::__private::fuzz`). Each input must return:
//! a panic fails the test, and a hang fails it through CI's time bound.

use multiproc::__private::fuzz;

/// Mutated inputs per seed.
const MUTATIONS: usize = 10_000;

/// A tiny deterministic generator (xorshift64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One to four random edits of `seed`.
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(b.len());
        match rng.below(8) {
            0 if !b.is_empty() => b[at] ^= 1 << rng.below(8),
            1 if !b.is_empty() => b[at] = rng.next() as u8,
            2 if !b.is_empty() => {
                let v = [0u8, 1, 0x7f, 0x80, 0xff][rng.below(5)];
                b[at] = v;
            }
            3 if b.len() >= at + 4 => {
                let v = [0u32, 1, u32::MAX, 1 << 31, 253, 254][rng.below(6)];
                b[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
            4 if b.len() >= at + 8 => {
                let v = [u64::MAX, 1 << 31, (1 << 31) + 1, 1 << 40][rng.below(4)];
                b[at..at + 8].copy_from_slice(&v.to_le_bytes());
            }
            5 => b.insert(at.min(b.len()), rng.next() as u8),
            6 if !b.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(b.len());
                b.drain(at..end);
            }
            _ => {
                let end = (at + 1 + rng.below(32)).min(b.len());
                let chunk = b[at.min(end)..end].to_vec();
                let to = rng.below(b.len());
                b.splice(to..to, chunk);
            }
        }
    }
    b.truncate(fuzz::MAX_INPUT);
    b
}

/// Runs `target` on each seed and on `MUTATIONS` mutations of each.
fn run(name: &str, seeds: &[Vec<u8>], mut target: impl FnMut(&[u8], &mut Rng)) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
    let mut count = 0;
    for seed in seeds {
        target(seed, &mut rng);
        for _ in 0..MUTATIONS {
            let input = mutate(&mut rng, seed);
            target(&input, &mut rng);
            count += 1;
        }
    }
    eprintln!("{name}: {count} mutated inputs");
}

fn header(kind: u8, nfds: u16, len: u64) -> Vec<u8> {
    let mut h = b"MPRC\x01".to_vec();
    h.push(kind);
    h.extend_from_slice(&nfds.to_le_bytes());
    h.extend_from_slice(&len.to_le_bytes());
    h
}

fn frame(kind: u8, nfds: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = header(kind, nfds, payload.len() as u64);
    f.extend_from_slice(payload);
    f
}

/// A message `(String, Vec<Fd>)` (or a call's arguments after the header):
/// small integers and lengths are one byte in both codecs' formats.
const DATA: &[u8] = &[2, b'h', b'i', 2, 0, 1];

#[test]
fn frame_reader_survives_mutated_streams() {
    let mut two = frame(5, 2, DATA);
    two.extend(frame(6, 0, b"raw bytes"));
    let seeds = vec![
        frame(5, 2, DATA),
        two,
        frame(8, 1, &[5; 13]),
        header(5, 0, 1 << 20),
        Vec::new(),
    ];
    run("frame_reader", &seeds, |input, rng| {
        fuzz::frame_reader(input, rng.next() as u32);
    });
}

#[test]
fn call_frame_survives_mutated_calls() {
    let mut call = vec![3, b'a', b'd', b'd', 4, b'm', b'a', b'i', b'n', 7];
    call.extend_from_slice(DATA);
    let seeds = vec![
        frame(1, 2, &call),
        frame(1, 0, &call[..9]),
        frame(2, 0, &call),
    ];
    run("call_frame", &seeds, |input, rng| {
        fuzz::call_frame(input, rng.next() as u8);
    });
}

#[test]
fn lane_header_survives_mutated_lanes() {
    let mut lane = Vec::new();
    lane.extend_from_slice(&10_000u64.to_le_bytes());
    lane.extend_from_slice(&0u32.to_le_bytes());
    let mut words = vec![0u8; 4096];
    words[0..4].copy_from_slice(b"MPLN");
    words[4..8].copy_from_slice(&4096u32.to_le_bytes());
    words[8..12].copy_from_slice(&8u32.to_le_bytes());
    words[128..132].copy_from_slice(&2u32.to_le_bytes());
    lane.extend_from_slice(&words);
    let seeds = vec![lane.clone(), lane[..12 + 140].to_vec(), vec![0; 12]];
    run("lane_header", &seeds, |input, _| fuzz::lane_header(input));
}

#[test]
fn queue_records_survive_mutated_regions() {
    // The region's words (1024 bytes), then the ring: an empty 8 KiB ring,
    // and one holding two records (length, flags; the bytes, padded).
    let mut empty = vec![0u8; 1024];
    empty[152..156].copy_from_slice(&8192u32.to_le_bytes());
    let mut two = empty.clone();
    // TAIL: two records, at offset 32 (a position is count << 32 | offset).
    two[384..392].copy_from_slice(&(2u64 << 32 | 32).to_le_bytes());
    two.extend_from_slice(&5u32.to_le_bytes());
    two.extend_from_slice(&0u32.to_le_bytes());
    two.extend_from_slice(b"hello\0\0\0");
    two.extend_from_slice(&3u32.to_le_bytes());
    two.extend_from_slice(&2u32.to_le_bytes());
    two.extend_from_slice(b"abc\0\0\0\0\0");
    let seeds = vec![empty, two];
    run("queue_records", &seeds, |input, _| {
        fuzz::queue_records(input)
    });
}

/// A record of the manager target: a 2-byte header (the length, its top
/// bit for raw bytes), then the bytes.
fn record(raw: bool, bytes: &[u8]) -> Vec<u8> {
    let mut r = (bytes.len() as u16 | if raw { 0x8000 } else { 0 })
        .to_le_bytes()
        .to_vec();
    r.extend_from_slice(bytes);
    r
}

/// A manager request: op, object id, then `fields`, as one record.
fn request(op: u8, id: u64, fields: &[u8]) -> Vec<u8> {
    let mut r = vec![op];
    r.extend_from_slice(&id.to_le_bytes());
    r.extend_from_slice(fields);
    record(false, &r)
}

/// A length-prefixed byte string of the manager's protocol.
fn bytes(v: &[u8]) -> Vec<u8> {
    let mut b = (v.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(v);
    b
}

/// Inputs of the manager target, each its reads' size then its records.
fn manager_inputs() -> Vec<Vec<u8>> {
    let cat = |parts: &[Vec<u8>]| -> Vec<u8> { parts.concat() };
    let dict = request(2, 0, &[1]);
    let insert = request(11, 1, &cat(&[bytes(b"k"), bytes(b"v")]));
    let get = request(10, 1, &bytes(b"k"));
    let lock = request(2, 0, &[6]);
    let mut acquire = 7u64.to_le_bytes().to_vec();
    acquire.extend_from_slice(&u64::MAX.to_le_bytes());
    let queue = request(2, 0, &cat(&[vec![5], 1u64.to_le_bytes().to_vec()]));
    vec![
        // Well formed: a dict, an insert and a get, read a byte at a time.
        cat(&[vec![1], dict.clone(), insert.clone(), get.clone()]),
        cat(&[vec![0], dict.clone(), insert.clone(), get.clone()]),
        // Truncated: a frame cut inside its fields, one cut inside its header.
        cat(&[vec![0], dict.clone(), record(false, &insert[2..12])]),
        cat(&[vec![0], dict.clone(), record(true, &[9, 0, 0, 0, 11])]),
        // Unknown ops, an empty frame, an unknown object kind.
        cat(&[vec![0], request(0, 0, &[]), request(255, 1, &[])]),
        cat(&[vec![0], record(false, &[]), request(2, 0, &[200])]),
        // Huge length fields: a frame's, a byte string's, a count's.
        cat(&[vec![0], record(true, &u32::MAX.to_le_bytes()), dict.clone()]),
        cat(&[
            vec![0],
            record(true, &(1u32 << 30).to_le_bytes()),
            get.clone(),
        ]),
        cat(&[
            vec![0],
            dict.clone(),
            request(10, 1, &u64::MAX.to_le_bytes()),
        ]),
        cat(&[
            vec![0],
            dict.clone(),
            request(18, 1, &u64::MAX.to_le_bytes()),
        ]),
        cat(&[
            vec![0],
            request(2, 0, &cat(&[vec![2], (1u64 << 61).to_le_bytes().to_vec()])),
        ]),
        // Wrong object kinds: a dict's op on a lock, a lock's on a dict,
        // an object that is not there.
        cat(&[
            vec![0],
            lock.clone(),
            insert.clone(),
            request(60, 2, &acquire),
        ]),
        cat(&[vec![0], dict.clone(), request(60, 1, &acquire), get.clone()]),
        cat(&[vec![0], request(14, 42, &[])]),
        // Blocking ops that would wait for ever: a lock taken twice, a
        // get from an empty queue, a full queue's put.
        cat(&[
            vec![0],
            lock,
            request(60, 1, &acquire),
            request(60, 1, &{
                let mut a = acquire.clone();
                a[0] = 8;
                a
            }),
        ]),
        cat(&[
            vec![3],
            queue,
            request(51, 1, &u64::MAX.to_le_bytes()),
            request(50, 1, &cat(&[u64::MAX.to_le_bytes().to_vec(), bytes(b"a")])),
            request(50, 1, &cat(&[u64::MAX.to_le_bytes().to_vec(), bytes(b"b")])),
        ]),
        // A barrier of two and an event, waited on.
        cat(&[
            vec![0],
            request(2, 0, &cat(&[vec![12], 2u64.to_le_bytes().to_vec()])),
            request(80, 1, &u64::MAX.to_le_bytes()),
            request(2, 0, &[11]),
            request(78, 2, &u64::MAX.to_le_bytes()),
        ]),
        // `update_with` on a dict and on a value, through the harness's
        // entry, an unknown one, and one on the wrong kind of object.
        cat(&[
            vec![0],
            dict.clone(),
            request(20, 1, &cat(&[bytes(b"k"), bytes(b"manager_fuzz_update")])),
            request(2, 0, &cat(&[vec![4], bytes(&[1, 0])])),
            request(42, 2, &bytes(b"manager_fuzz_update")),
            request(42, 2, &bytes(b"no_such_entry")),
            request(42, 1, &bytes(b"manager_fuzz_update")),
        ]),
        Vec::new(),
    ]
}

#[test]
fn manager_requests_survive_fixed_inputs() {
    for input in manager_inputs() {
        fuzz::manager_requests(&input);
    }
}

#[test]
fn manager_requests_survive_mutated_inputs() {
    run("manager_requests", &manager_inputs(), |input, _| {
        fuzz::manager_requests(input)
    });
}
