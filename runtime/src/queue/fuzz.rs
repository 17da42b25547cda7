//! The queue's fuzz entry point (`crate::fuzz_hooks::queue_records`): a
//! queue whose shared region holds arbitrary bytes, as a broken or hostile
//! process holding the queue could leave it. Only with `test-hooks`.

use std::os::fd::OwnedFd;

use super::*;

/// The ring of a fuzzed queue: small, so an input can fill it.
const FUZZ_RING: usize = 8 << 10;
/// The words a scribbler leaves alone: the region's magic (checked when a
/// region is received, never after) and the ring's two locks (their words
/// and owner tags, `sys::ring`): a lock held by a live process is a wait,
/// not bad input.
const KEPT: [std::ops::Range<usize>; 3] = [0..8, 128..144, 256..272];

/// Writes `bytes` over a new queue's region (its words, then its ring),
/// except the words in [`KEPT`], then opens the queue and takes, puts and
/// takes items without waiting. Every take's result is dropped: an error
/// is a correct answer; a panic, a hang or an unbounded allocation is not.
pub(crate) fn fuzz_records(bytes: &[u8]) {
    let Ok(region) = crate::sync::create(KIND, ATOMICS_LEN, FUZZ_RING, |r| {
        Ring::init(r, FUZZ_RING);
    }) else {
        return;
    };
    let Ok(region) = Arc::try_unwrap(region) else {
        return;
    };
    let mut kept = Vec::new();
    for range in KEPT {
        let mut saved = vec![0u8; range.len()];
        if rustix::io::pread(region.as_fd(), &mut saved, range.start as u64).is_err() {
            return;
        }
        kept.push((range.start, saved));
    }
    let bytes = &bytes[..bytes.len().min(ATOMICS_LEN + FUZZ_RING)];
    if rustix::io::pwrite(region.as_fd(), bytes, 0).is_err() {
        return;
    }
    for (at, saved) in &kept {
        if rustix::io::pwrite(region.as_fd(), saved, *at as u64).is_err() {
            return;
        }
    }
    let Ok((side_tx, side_rx)) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    ) else {
        return;
    };
    let queue = Queue::<Vec<u8>>::from_parts(region, side_tx, side_rx);
    let inner = &queue.inner;
    let _ = (inner.len(), inner.capacity(), inner.is_closed());
    let mut out = Vec::new();
    let mut take = |n: usize| {
        for _ in 0..n {
            if inner.get_record(Deadline::Now, &mut out).is_err() {
                break;
            }
        }
    };
    take(8);
    let handle: Vec<OwnedFd> = std::fs::File::open("/dev/null")
        .ok()
        .map(OwnedFd::from)
        .into_iter()
        .collect();
    for (i, payload) in bytes.chunks(1 + bytes.len() / 4).take(4).enumerate() {
        let fds = if i == 1 { &handle[..] } else { &[] };
        let record = Record {
            payload,
            fds,
            raw: i == 2,
        };
        let _ = inner.put_record(record, Deadline::Now, false);
    }
    take(8);
}
