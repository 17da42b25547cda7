//! The cluster launcher without a cluster: `tests/data/fake_srun.sh` stands
//! in for `srun` and starts the tasks on this host, so that the launcher's
//! path (boot marker, connecting back, the handshake, the TCP link, ending
//! the workers) is tested by every `cargo test`. `tests/cluster.rs` runs
//! the same on the emulated Slurm cluster.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::eventually;
use multiproc::cluster::Slurm;
use multiproc::{ErrorKind, Pool, Queue, entry, process_entry};

fn fake_srun() -> Slurm {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/fake_srun.sh");
    Slurm::new()
        .srun(script)
        .start_timeout(Duration::from_secs(60))
}

#[process_entry]
fn square(x: u64) -> u64 {
    x * x
}

#[process_entry]
fn pid_of_worker() -> u32 {
    std::process::id()
}

#[process_entry]
fn abort_on(x: u64) -> u64 {
    if x == 5 {
        std::process::abort();
    }
    x
}

#[process_entry]
fn put_into(q: Queue<u64>, x: u64) {
    let _ = q.put(x);
}

#[process_entry]
fn returns_a_queue() -> Queue<u64> {
    Queue::new().unwrap()
}

#[test]
fn workers_started_by_the_launcher_run_a_map() {
    let pool = Pool::builder()
        .launcher(fake_srun().tasks(3))
        .build()
        .unwrap();
    assert_eq!(pool.processes(), 3);
    let out = pool.map(entry!(square), 0..1000u64).unwrap();
    assert_eq!(out, (0..1000u64).map(|x| x * x).collect::<Vec<_>>());
    let pending = pool.apply_async(entry!(square), (12,)).unwrap();
    assert_eq!(pending.get().unwrap(), 144);
    pool.close();
    pool.join().unwrap();
}

#[test]
fn handles_are_refused_both_ways_with_the_reason() {
    let pool = Pool::builder()
        .launcher(fake_srun().tasks(1))
        .build()
        .unwrap();
    let q = Queue::<u64>::new().unwrap();
    let err = pool.apply(entry!(put_into), (q, 1)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("cannot cross"), "{err}");
    let err = pool.apply(entry!(returns_a_queue), ()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Encode, "{err}");
    assert!(err.to_string().contains("cannot cross"), "{err}");
    assert_eq!(pool.apply(entry!(square), (3,)).unwrap(), 9);
}

#[process_entry]
fn init_with_queue(q: Queue<u64>) {
    let _ = q.put(1);
}

#[test]
fn an_initializer_holding_a_handle_is_refused_before_anything_starts() {
    let q = Queue::<u64>::new().unwrap();
    let err = Pool::builder()
        .launcher(fake_srun().tasks(1))
        .initializer(entry!(init_with_queue), (q,))
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("cannot cross"), "{err}");
}

#[test]
fn a_dead_worker_fails_only_its_task() {
    let pool = Pool::builder()
        .launcher(fake_srun().tasks(2))
        .build()
        .unwrap();
    let results: Vec<_> = pool
        .imap_chunked(entry!(abort_on), 0..20u64, 1)
        .unwrap()
        .collect();
    for (x, r) in results.iter().enumerate() {
        match r {
            Ok(v) => assert_eq!(*v, x as u64),
            Err(e) => {
                assert_eq!(x, 5, "{e}");
                assert_eq!(e.kind(), ErrorKind::Disconnected, "{e}");
            }
        }
    }
    assert!(results[5].is_err());
    // One worker is left, and it serves.
    assert_eq!(pool.map(entry!(square), 0..4u64).unwrap(), [0, 1, 4, 9]);
}

#[test]
fn dropping_the_pool_ends_its_workers() {
    let pool = Pool::builder()
        .launcher(fake_srun().tasks(2))
        .build()
        .unwrap();
    let pids: std::collections::HashSet<u32> = pool
        .starmap_chunked(entry!(pid_of_worker), vec![(); 50], 1)
        .unwrap()
        .into_iter()
        .collect();
    assert!(!pids.is_empty());
    for pid in &pids {
        assert_ne!(*pid, std::process::id());
        assert!(common::state_of(*pid).is_some(), "worker {pid} runs");
    }
    drop(pool);
    for pid in pids {
        eventually("the worker is gone", || {
            common::state_of(pid).is_none_or(|s| s == b'Z')
        });
    }
}

#[test]
fn a_launcher_that_refuses_fails_build_with_its_words() {
    let err = Pool::builder()
        .launcher(fake_srun().partition("refused"))
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Spawn, "{err}");
    assert!(err.to_string().contains("Invalid partition"), "{err}");

    let err = Pool::builder()
        .launcher(Slurm::new().srun("/nonexistent/srun"))
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Spawn, "{err}");
    assert!(err.to_string().contains("could not run"), "{err}");
}

/// One byte more than a message between hosts may hold (1 GiB), as a
/// task's argument or result.
const OVER_TCP_LIMIT: usize = (1 << 30) + 1;

#[process_entry]
fn length_of(s: String) -> u64 {
    s.len() as u64
}

#[process_entry]
fn string_of_len(n: u64) -> String {
    "x".repeat(n as usize)
}

#[test]
fn a_message_over_the_tcp_limit_fails_its_task_and_the_worker_serves_on() {
    // One worker: a lost worker is not replaced, so the last call shows
    // that neither message cost the pool its worker.
    let pool = Pool::builder()
        .launcher(fake_srun().tasks(1))
        .build()
        .unwrap();
    let err = pool
        .apply(entry!(length_of), ("x".repeat(OVER_TCP_LIMIT),))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Encode, "{err}");
    assert!(err.to_string().contains("limit"), "{err}");
    let err = pool
        .apply(entry!(string_of_len), (OVER_TCP_LIMIT as u64,))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Encode, "{err}");
    assert!(err.to_string().contains("limit"), "{err}");
    assert_eq!(pool.apply(entry!(square), (3,)).unwrap(), 9);
}

#[test]
fn chunks_too_large_together_for_one_message_each_go_alone() {
    let pool = Pool::builder()
        .launcher(fake_srun().tasks(1))
        .build()
        .unwrap();
    // Quick chunks, one after another: the worker is then given several
    // chunks in one message.
    let warm = pool.map_chunked(entry!(square), 0..2000u64, 1).unwrap();
    assert_eq!(warm.len(), 2000);
    // Three arguments of 0.4 GiB: any two are over the limit of one
    // message together, and each fits alone.
    let len = 400 << 20;
    let out = pool
        .map_chunked(entry!(length_of), vec!["x".repeat(len); 3], 1)
        .unwrap();
    assert_eq!(out, [len as u64; 3]);
}

/// A worker played by the test itself, to say what no real worker says:
/// `fake_srun`'s `--fake-spy` hands it the port and key the workers get,
/// and it speaks the workers' protocol by hand (each message its length,
/// 8 bytes little-endian, then its encoding: an enum's variant as a
/// varint, then its fields).
mod rogue {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::path::PathBuf;

    use hmac::{Hmac, Mac};
    use sha2::Sha256;

    use super::common::{BOUND, eventually};

    const MAGIC: &[u8; 8] = b"MPAUTH\x01\x00";
    /// `Msg::Ready`.
    pub const READY: &[u8] = &[2];
    /// `Msg::Boot`, without an initializer or a task limit.
    pub const BOOT: &[u8] = &[6, 0, 0];

    /// A fresh path for `--fake-spy`.
    pub fn spy_path(test: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("multiproc-spy-{}-{test}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        path
    }

    /// The port and key that the launcher was given.
    pub fn spy(path: &PathBuf) -> (u16, Vec<u8>) {
        eventually("the launcher wrote the port and key", || path.exists());
        let text = std::fs::read_to_string(path).unwrap();
        let _ = std::fs::remove_file(path);
        let (port, key) = text.trim().split_once(' ').unwrap();
        let key = (0..key.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&key[i..i + 2], 16).unwrap())
            .collect();
        (port.parse().unwrap(), key)
    }

    /// `Msg::Hello` from a worker on host `rogue` with this pid.
    pub fn hello(pid: u8) -> Vec<u8> {
        assert!(pid < 251, "one varint byte");
        let mut m = vec![5, 5];
        m.extend_from_slice(b"rogue");
        m.extend_from_slice(&[pid, 0, 0, 0]);
        m
    }

    /// A connection to the pool that proved the key.
    pub struct Peer(pub TcpStream);

    impl Peer {
        pub fn connect(port: u16, key: &[u8]) -> Peer {
            let (verdict, peer) = Peer::try_key(port, key);
            assert_eq!(verdict, 0xA5, "the pool accepted the key");
            peer
        }

        /// Proves `key` (right or not): the pool's verdict byte, and the
        /// connection.
        pub fn try_key(port: u16, key: &[u8]) -> (u8, Peer) {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(BOUND)).unwrap();
            let mut challenge = [0u8; 40];
            s.read_exact(&mut challenge).unwrap();
            assert_eq!(&challenge[..8], MAGIC);
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
            mac.update(b"client");
            mac.update(&challenge[8..]);
            let mut answer = MAGIC.to_vec();
            answer.extend_from_slice(&mac.finalize().into_bytes());
            answer.extend_from_slice(&[7u8; 32]);
            s.write_all(&answer).unwrap();
            let mut verdict = [0u8; 1];
            s.read_exact(&mut verdict).unwrap();
            if verdict[0] == 0xA5 {
                let mut proof = [0u8; 32];
                s.read_exact(&mut proof).unwrap();
            }
            (verdict[0], Peer(s))
        }

        /// Sends `payload` as one message.
        pub fn send(&mut self, payload: &[u8]) {
            self.0
                .write_all(&(payload.len() as u64).to_le_bytes())
                .unwrap();
            self.0.write_all(payload).unwrap();
        }

        /// The next message; `None` once the pool closed the connection.
        pub fn recv(&mut self) -> Option<Vec<u8>> {
            let mut len = [0u8; 8];
            match self.0.read_exact(&mut len) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("{e}"),
            }
            let mut m = vec![0u8; u64::from_le_bytes(len) as usize];
            self.0.read_exact(&mut m).unwrap();
            Some(m)
        }
    }

    /// Which of `peers` have something to read (or their end), waiting
    /// until one has, within [`BOUND`].
    pub fn readable(peers: &[&Peer]) -> Vec<bool> {
        let mut fds: Vec<rustix::event::PollFd<'_>> = peers
            .iter()
            .map(|p| rustix::event::PollFd::new(&p.0, rustix::event::PollFlags::IN))
            .collect();
        let bound = rustix::event::Timespec {
            tv_sec: BOUND.as_secs() as i64,
            tv_nsec: 0,
        };
        let n = rustix::event::poll(&mut fds, Some(&bound)).unwrap();
        assert!(n > 0, "nothing came within {BOUND:?}");
        fds.iter().map(|f| !f.revents().is_empty()).collect()
    }
}

/// A pool that waits for `tasks` workers, `real` of them real, the others
/// played by the test; built on a thread of its own meanwhile.
fn pool_with_rogues(
    test: &str,
    tasks: u32,
    real: u32,
) -> (
    std::thread::JoinHandle<multiproc::Result<Pool>>,
    u16,
    Vec<u8>,
) {
    let spy = rogue::spy_path(test);
    let mut spy_arg = std::ffi::OsString::from("--fake-spy=");
    spy_arg.push(&spy);
    let launcher = fake_srun()
        .tasks(tasks)
        .arg(format!("--fake-real={real}"))
        .arg(spy_arg);
    let builder = std::thread::spawn(move || Pool::builder().launcher(launcher).build());
    let (port, key) = rogue::spy(&spy);
    (builder, port, key)
}

#[test]
fn a_worker_that_connects_back_twice_is_counted_once() {
    let (builder, port, key) = pool_with_rogues("twice", 2, 0);
    let mut a = rogue::Peer::connect(port, &key);
    a.send(&rogue::hello(1));
    let mut b = rogue::Peer::connect(port, &key);
    b.send(&rogue::hello(1));
    // The same worker again: one of the two connections is turned away
    // (closed), and the pool still waits for its second worker.
    let ready = rogue::readable(&[&a, &b]);
    assert_eq!(ready.iter().filter(|r| **r).count(), 1, "{ready:?}");
    let (mut kept, mut turned_away) = if ready[0] { (b, a) } else { (a, b) };
    assert_eq!(turned_away.recv(), None, "the duplicate was turned away");
    let mut c = rogue::Peer::connect(port, &key);
    c.send(&rogue::hello(2));
    for peer in [&mut kept, &mut c] {
        assert_eq!(peer.recv().as_deref(), Some(rogue::BOOT));
        peer.send(rogue::READY);
    }
    let pool = builder.join().unwrap().unwrap();
    assert_eq!(pool.processes(), 2);
}

/// A pool whose one worker is played by the test, booted and ready.
fn pool_of_one_rogue(test: &str) -> (Pool, rogue::Peer) {
    let (builder, port, key) = pool_with_rogues(test, 1, 0);
    let mut peer = rogue::Peer::connect(port, &key);
    peer.send(&rogue::hello(1));
    assert_eq!(peer.recv().as_deref(), Some(rogue::BOOT));
    peer.send(rogue::READY);
    (builder.join().unwrap().unwrap(), peer)
}

/// What a task's error says when its worker sent `answer` in reply.
fn error_after_answer(test: &str, answer: impl FnOnce(&mut rogue::Peer, u8)) -> multiproc::Error {
    let (pool, mut peer) = pool_of_one_rogue(test);
    let pending = pool.apply_async(entry!(square), (3,)).unwrap();
    let run = peer.recv().unwrap();
    // `Msg::Run` of one chunk: its variant, the count, then the chunk's id.
    assert_eq!(run[..2], [0, 1], "{run:?}");
    answer(&mut peer, run[2]);
    let err = pending.get().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Disconnected, "{err}");
    err
}

#[test]
fn a_worker_that_sends_malformed_bytes_is_cut_off_and_its_task_says_so() {
    let err = error_after_answer("malformed", |peer, _| peer.send(&[0xff; 4]));
    let text = err.to_string();
    assert!(text.contains("could not be decoded"), "{text}");
    assert!(!text.contains("closed from its side"), "{text}");
}

#[test]
fn a_worker_that_answers_a_task_it_does_not_hold_is_cut_off_and_its_task_says_so() {
    let err = error_after_answer("not-held", |peer, id| {
        // `Msg::Done` for another chunk, with no outcomes: its variant, the
        // id, then the packed outcomes (a byte string of 5 bytes: a count
        // of 0 and no flags; no handles; no other outcomes).
        peer.send(&[4, id.wrapping_add(1), 5, 0, 0, 0, 0, 0, 0, 0]);
    });
    let text = err.to_string();
    assert!(text.contains("does not hold"), "{text}");
    assert!(!text.contains("closed from its side"), "{text}");
}

#[test]
fn a_worker_that_dies_in_the_middle_of_an_answer_fails_its_task_with_the_reason() {
    let err = error_after_answer("mid-message", |peer, _| {
        use std::io::Write;
        peer.0.write_all(&100u64.to_le_bytes()).unwrap();
        peer.0.write_all(&[4, 0, 1]).unwrap();
        peer.0.shutdown(std::net::Shutdown::Both).unwrap();
    });
    assert!(err.to_string().contains("middle of a message"), "{err}");
}

#[test]
fn a_hello_announced_too_large_is_refused_before_it_is_read() {
    use std::io::Write;
    let (builder, port, key) = pool_with_rogues("large-hello", 1, 0);
    let mut peer = rogue::Peer::connect(port, &key);
    // A Hello is a host name and a few numbers: 256 MiB is no Hello. The
    // pool must refuse it at its length, not read (and keep) what comes.
    let announced: usize = 256 << 20;
    peer.0.write_all(&(announced as u64).to_le_bytes()).unwrap();
    let block = vec![0u8; 1 << 20];
    let mut written = 0;
    while written < announced {
        match peer.0.write(&block) {
            Ok(n) => written += n,
            Err(_) => break,
        }
    }
    assert!(
        written < announced / 4,
        "the pool read {written} bytes of a Hello"
    );
    // The pool still takes a worker that says a proper Hello.
    let mut worker = rogue::Peer::connect(port, &key);
    worker.send(&rogue::hello(1));
    assert_eq!(worker.recv().as_deref(), Some(rogue::BOOT));
    worker.send(rogue::READY);
    assert_eq!(builder.join().unwrap().unwrap().processes(), 1);
}

#[test]
fn a_worker_that_stops_reading_holds_up_no_call_of_the_pool() {
    // Its node frozen, as far as the pool can tell: the worker is stopped,
    // its kernel takes what fits in its socket and no more.
    let pool = Pool::builder()
        .launcher(fake_srun().tasks(1).node_timeout(Duration::from_secs(60)))
        .build()
        .unwrap();
    let pid = pool.apply(entry!(pid_of_worker), ()).unwrap();
    let signal = |sig: &str| {
        let status = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success());
    };
    signal("STOP");
    common::eventually("the worker is stopped", || {
        common::state_of(pid) == Some(b'T')
    });
    // Far more than the sockets hold between the two processes.
    let large = "x".repeat(64 << 20);
    let start = std::time::Instant::now();
    let pending = pool.apply_async(entry!(length_of), (large,)).unwrap();
    let also = pool.apply_async(entry!(square), (5,)).unwrap();
    pool.terminate();
    // Neither waited for the stopped worker (which is noticed lost only
    // after node_timeout).
    assert!(
        start.elapsed() < common::BOUND,
        "the pool's calls waited {:?} for a worker that does not read",
        start.elapsed()
    );
    assert!(pending.get().unwrap_err().is_disconnected());
    assert!(also.get().unwrap_err().is_disconnected());
    signal("CONT");
}

#[test]
fn a_launcher_that_exits_early_fails_build_at_once_with_its_words() {
    // It leaves a task running that holds its standard error open (and
    // that never connects back: a stand-in).
    let start = std::time::Instant::now();
    let err = Pool::builder()
        .launcher(
            fake_srun()
                .tasks(2)
                .arg("--fake-real=0")
                .arg("--fake-abandon")
                .start_timeout(Duration::from_secs(120)),
        )
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Spawn, "{err}");
    assert!(err.to_string().contains("lost contact"), "{err}");
    assert!(
        start.elapsed() < common::BOUND,
        "build took {:?}",
        start.elapsed()
    );
}

#[test]
fn a_wrong_key_is_refused_and_a_flood_of_silent_connections_locks_no_worker_out() {
    let (builder, port, key) = pool_with_rogues("wrong-key", 1, 0);
    let mut wrong = key.clone();
    wrong[0] ^= 1;
    let (verdict, mut refused) = rogue::Peer::try_key(port, &wrong);
    assert_eq!(verdict, 0x5A, "refused");
    assert_eq!(refused.recv(), None, "and closed");
    // Far more connections that never speak than the pool lets into the
    // handshake at once: the oldest are cut short.
    let silent: Vec<std::net::TcpStream> = (0..300)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let mut worker = rogue::Peer::connect(port, &key);
    worker.send(&rogue::hello(1));
    assert_eq!(worker.recv().as_deref(), Some(rogue::BOOT));
    worker.send(rogue::READY);
    assert_eq!(builder.join().unwrap().unwrap().processes(), 1);
    drop(silent);
}

#[test]
fn when_the_last_worker_is_lost_what_is_left_fails_instead_of_waiting() {
    // Lost workers are not replaced: with none left, the rest fails.
    let pool = Pool::builder()
        .launcher(fake_srun().tasks(1))
        .build()
        .unwrap();
    let results: Vec<_> = pool
        .imap_chunked(entry!(abort_on), 0..10u64, 1)
        .unwrap()
        .collect();
    for (x, r) in results.iter().enumerate() {
        match (x, r) {
            (0..5, Ok(v)) => assert_eq!(*v, x as u64),
            (5, Err(e)) => {
                // How a remote worker ended is not known here.
                assert_eq!(e.kind(), ErrorKind::Disconnected, "{e}");
                assert_eq!(e.exitcode(), None, "{e}");
            }
            (6.., Err(e)) => {
                assert_eq!(e.kind(), ErrorKind::Spawn, "{e}");
                assert!(e.to_string().contains("no workers left"), "{e}");
            }
            _ => panic!("item {x}: {r:?}"),
        }
    }
    let err = pool.apply(entry!(square), (3,)).unwrap_err();
    assert!(err.to_string().contains("no workers left"), "{err}");
}
