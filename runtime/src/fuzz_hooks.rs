//! Entry points for the fuzz targets (`fuzz/`) and the stable smoke test
//! (`tests/fuzz_smoke.rs`). Not public API: only with the `test-hooks`
//! feature.
//!
//! Each feeds arbitrary bytes to the crate's real parsing code, over a real
//! socket pair or a real memfd, as another process could. None may panic,
//! hang or allocate without bound, whatever the bytes; each returns nothing
//! (an error is a correct answer to bad input).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::net::Shutdown;

use crate::spawn::protocol::CallHeader;
use crate::sys::shm::SharedRegion;
use crate::sys::slots::SlotRing;
use crate::wire::{self, FrameKind, FrameReader};

/// Bytes of an input used; the rest is ignored. Small enough that the
/// whole input fits in a socket's buffer, so one thread can write it all
/// before reading.
pub const MAX_INPUT: usize = 32 << 10;

/// A lane message's length is cut to this (the real bound, 2 GiB, is a
/// legitimate message's size, too much to allocate per fuzz input).
const MAX_LANE_LEN: u64 = 1 << 20;

fn stream_pair() -> Option<(OwnedFd, OwnedFd)> {
    crate::sys::stream_pair().ok()
}

/// `n` descriptors to send (of `/dev/null`).
fn some_fds(n: usize) -> Vec<OwnedFd> {
    (0..n)
        .filter_map(|_| std::fs::File::open("/dev/null").ok().map(OwnedFd::from))
        .collect()
}

/// Writes `bytes` to `tx` in up to three sends (cut where `cuts` says),
/// the descriptors beside the send `with_fds` picks, then shuts `tx`.
fn feed(tx: OwnedFd, bytes: &[u8], cuts: u8, fds: &[OwnedFd], with_fds: u8) {
    let len = bytes.len();
    let a = len * usize::from(cuts & 0x0f) / 15;
    let b = a + (len - a) * usize::from(cuts >> 4) / 15;
    let parts = [&bytes[..a], &bytes[a..b], &bytes[b..]];
    let fds: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() {
            continue;
        }
        let attach: &[BorrowedFd<'_>] = if usize::from(with_fds % 3) == i {
            &fds
        } else {
            &[]
        };
        if wire::send_all(tx.as_fd(), part, attach).is_err() {
            break;
        }
    }
    let _ = rustix::net::shutdown(&tx, Shutdown::Write);
}

/// Feeds `bytes` through a connection's frame reader (`wire::FrameReader`),
/// with descriptors riding beside them: `control`'s low 3 bits are how
/// many, the rest say where the stream is cut into sends, which send
/// carries them and whether the reader waits with a deadline. Every frame
/// read is decoded as a message carrying handles.
pub fn frame_reader(bytes: &[u8], control: u32) {
    let bytes = &bytes[..bytes.len().min(MAX_INPUT)];
    let [n_fds, cuts, with_fds, mode] = control.to_le_bytes();
    let Some((tx, rx)) = stream_pair() else {
        return;
    };
    let fds = some_fds(usize::from(n_fds & 7));
    feed(tx, bytes, cuts, &fds, with_fds);
    drop(fds);
    let died = || false;
    let (died, deadline): (Option<&dyn Fn() -> bool>, _) = if mode & 1 == 0 {
        (None, None)
    } else {
        (Some(&died), Some(Instant::now() + Duration::from_secs(5)))
    };
    let mut reader = FrameReader::default();
    let mut out = Vec::new();
    // Each frame takes at least a header of the input.
    for _ in 0..=bytes.len() / wire::FRAME_HEADER_LEN {
        match reader.recv(rx.as_fd(), &mut out, died, deadline) {
            Ok(Some((frame, at))) => {
                let payload = match at {
                    Some(at) => reader.bytes(at),
                    None => &out[..],
                };
                if frame.kind == FrameKind::Data {
                    let _ = wire::decode::<(String, Vec<crate::Fd>)>(payload, frame.fds);
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
}

/// Feeds `bytes` to the child's side of a call, as the child reads it from
/// its control socket: `wire::recv_frame`, then the call header
/// (`decode_prefix::<CallHeader>`), then arguments that carry handles. The
/// low 3 bits of `n_fds` are how many descriptors ride with the frame.
pub fn call_frame(bytes: &[u8], n_fds: u8) {
    let bytes = &bytes[..bytes.len().min(MAX_INPUT)];
    let Some((tx, rx)) = stream_pair() else {
        return;
    };
    let fds = some_fds(usize::from(n_fds & 7));
    feed(tx, bytes, n_fds >> 3, &fds, 0);
    drop(fds);
    let mut buf = Vec::new();
    let Ok(Some(frame)) = wire::recv_frame(rx.as_fd(), &mut buf) else {
        return;
    };
    if frame.kind != FrameKind::Call {
        return;
    }
    let (header, fds) = wire::decode_prefix::<CallHeader>(&buf, frame.fds);
    if let Ok((_, used)) = header {
        let _ = wire::decode::<(u64, String, Vec<crate::Fd>)>(&buf[used..], fds);
    }
}

/// Feeds `bytes` to a pipe's lane as the receiver of a large message sees
/// it: the first 12 bytes are the announcing frame's message length (cut
/// to 1 MiB) and first slot, the rest the lane's shared header words (its
/// first 4096 bytes: magic, geometry, counters, tags), in a real sealed
/// memfd of 64 KiB of slots. The lane is checked and mapped as a received
/// one (`SlotRing::receive`), then read with a deadline already passed.
pub fn lane_header(bytes: &[u8]) {
    const WORDS: usize = 4096;
    let bytes = &bytes[..bytes.len().min(MAX_INPUT)];
    let mut message = [0u8; 12];
    let split = bytes.len().min(message.len());
    message[..split].copy_from_slice(&bytes[..split]);
    let words = &bytes[split..];
    let [l0, l1, l2, l3, l4, l5, l6, l7, f0, f1, f2, f3] = message;
    let len = u64::from_le_bytes([l0, l1, l2, l3, l4, l5, l6, l7]) % (MAX_LANE_LEN + 1);
    let first = u32::from_le_bytes([f0, f1, f2, f3]);
    let Ok(region) = SharedRegion::create("multiproc-fuzz-lane", WORDS, 64 << 10) else {
        return;
    };
    for (i, word) in words.chunks(4).take(WORDS / 4).enumerate() {
        let mut w = [0u8; 4];
        w[..word.len()].copy_from_slice(word);
        region
            .atomic_u32(i * 4)
            .store(u32::from_le_bytes(w), std::sync::atomic::Ordering::Relaxed);
    }
    let Ok(fd) = region.as_fd().try_clone_to_owned() else {
        return;
    };
    let mut cached = None;
    let Ok(lane) = SlotRing::receive(&mut cached, fd) else {
        return;
    };
    let mut out = Vec::new();
    let _ = lane.read(first, len as usize, &mut out, || true, Some(Instant::now()));
}

/// Feeds `bytes` to a queue's records: see `queue::fuzz::records`.
pub fn queue_records(bytes: &[u8]) {
    crate::queue::fuzz_records(&bytes[..bytes.len().min(MAX_INPUT)]);
}

/// Feeds `bytes` to a manager server as one client's requests: see
/// `manager::server::fuzz::fuzz_requests` (records of framed or raw bytes,
/// blocking requests' timeouts forced to 0, then a well-formed client that
/// must be served).
pub fn manager_requests(bytes: &[u8]) {
    crate::manager::fuzz_requests(&bytes[..bytes.len().min(MAX_INPUT)]);
}
