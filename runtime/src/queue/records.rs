//! The record protocol: how an item is laid out in the ring (an 8-byte
//! header of length and flags, then its bytes, padded to 8), where a putter
//! places it, how getters and putters sleep and wake, and how items with
//! handles or too large for the ring reach for the side socket.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::{Acquire, Relaxed, SeqCst};
use std::time::Duration;

use crate::channel_error::RecvTimeoutError;
use crate::error::Error;
use crate::sys::futex;
use crate::sys::lock_word::Deadline;
use crate::sys::lock_word::Spin;
use crate::sys::ring::{GetSide, Pos, Ring};

use super::*;

pub(super) const RECORD_HEADER: usize = 8;
/// Record flags (the low byte of the header's second word).
pub(super) const PAD: u32 = 1;
pub(super) const SIDE: u32 = 2;
pub(super) const SPILLED: u32 = 4;
/// The item's bytes are a `Vec<u8>` item's own, not an encoding.
pub(super) const RAW: u32 = 8;
/// A side record's message number sits above the flags (its low 24 bits).
pub(super) const NUMBER_SHIFT: u32 = 8;

pub(super) struct Inner {
    pub(super) ring: Ring,
    /// Putters send side messages here; getters receive them on `side_rx`.
    pub(super) side_tx: OwnedFd,
    pub(super) side_rx: OwnedFd,
    /// Items of an unbounded queue waiting in this process for room.
    pub(super) backlog: super::backlog::Backlog,
}

/// An item ready to be put: its bytes, the descriptors of its handles, and
/// whether the bytes are a `Vec<u8>` item itself (raw) rather than the
/// codec's encoding of an item.
#[derive(Debug, Clone, Copy)]
pub(super) struct Record<'a> {
    pub(super) payload: &'a [u8],
    pub(super) fds: &'a [OwnedFd],
    pub(super) raw: bool,
}

/// A taken item, its bytes aside: the descriptors that came with it, and
/// whether its bytes are raw (see [`Record`]).
#[derive(Debug)]
pub(super) struct Taken {
    pub(super) fds: Vec<OwnedFd>,
    pub(super) raw: bool,
}

pub(super) const fn align8(n: usize) -> usize {
    (n + 7) & !7
}

impl Inner {
    pub(super) fn word(&self, offset: usize) -> &AtomicU32 {
        self.ring.region().atomic_u32(offset)
    }

    pub(super) fn capacity(&self) -> usize {
        self.word(CAPACITY).load(Relaxed) as usize
    }

    pub(super) fn is_closed(&self) -> bool {
        self.word(CLOSED).load(Acquire) != 0
    }

    pub(super) fn len(&self) -> usize {
        // Head first: the tail read after it is at or past it.
        let head = self.ring.head();
        head.until(self.ring.tail()) as usize
    }

    pub(super) fn close(&self) {
        // Under the put lock, so no put that saw the queue open is still
        // under way when this returns.
        if let Some(put) = self.ring.lock_put(Deadline::Never) {
            self.word(CLOSED).store(1, SeqCst);
            drop(put);
        }
        for word in [NOT_EMPTY, NOT_FULL] {
            self.word(word).fetch_add(1, SeqCst);
            futex::wake_all(self.word(word));
        }
    }

    /// After a put (or get): wakes the getters (putters) counted in
    /// `waiters` as sleeping on `seq`. The count is taken, not read: a woken
    /// sleeper that has yet to run (or one that timed out) is no reason for
    /// the next put to make a system call too; sleepers count themselves
    /// again before each sleep.
    pub(super) fn wake(&self, waiters: usize, seq: usize) {
        let waiters = self.word(waiters);
        if waiters.load(SeqCst) == 0 {
            return;
        }
        let n = waiters.swap(0, SeqCst);
        if n > 0 {
            self.word(seq).fetch_add(1, SeqCst);
            futex::wake(self.word(seq), n);
        }
    }

    /// Puts one item. `counted`: a `JoinableQueue` item already counted as
    /// unfinished (one that waited in the backlog).
    pub(super) fn put_record(
        &self,
        record: Record<'_>,
        wait: Deadline,
        counted: bool,
    ) -> Result<(), PutFail> {
        let Record { payload, fds, raw } = record;
        let joinable = self.word(JOINABLE).load(Relaxed) != 0 && !counted;
        let ring = self.ring.len();
        let spilled = payload.len() > SPILL_OVER.min(ring / 4);
        let spill = if spilled {
            Some(wire::spill(payload).map_err(|e| {
                PutFail::Failed(Error::io("spilling a large item to shared memory", e))
            })?)
        } else {
            None
        };
        let side = spilled || !fds.is_empty();
        let inline = if spilled { 0 } else { payload.len() };
        let need = RECORD_HEADER + align8(inline);
        let capacity = self.capacity() as u32;
        let mut spin = Spin::new();
        loop {
            let Some(mut put) = self.ring.lock_put(wait) else {
                return Err(PutFail::Full);
            };
            if self.is_closed() {
                return Err(PutFail::Closed);
            }
            let tail = put.tail();
            let mut head = put.seen_head();
            let mut at = place(tail, head, need, ring, capacity);
            let look = match at {
                None => true,
                // Before a side message, so that a full socket is waited on
                // with a fresh head (below).
                Some(_) if side => true,
                Some(at) => {
                    at >= WRAP_EARLY
                        && (at + need) / LOOK_EVERY != at / LOOK_EVERY
                        && head.until(tail) != 0
                }
            };
            if look {
                head = put.refresh_head();
                at = place(tail, head, need, ring, capacity);
            }
            let mut number = 0;
            let sent = match at {
                Some(_) if side => {
                    number = self.word(SIDE_SENT).fetch_add(1, Relaxed);
                    send_side(
                        self.side_tx.as_fd(),
                        tail.count(),
                        number,
                        spill.as_ref(),
                        fds,
                    )
                    .map_err(|e| PutFail::Failed(Error::io("sending an item's handles", e)))?
                }
                _ => true,
            };
            if let (Some(at), true) = (at, sent) {
                let t = tail.offset();
                let mut flags = 0;
                if side {
                    flags |= SIDE | number << NUMBER_SHIFT;
                }
                if spilled {
                    flags |= SPILLED;
                }
                if raw {
                    flags |= RAW;
                }
                let mut next = at + need;
                if next == ring {
                    next = 0;
                }
                let header = record_header(payload.len() as u32, flags);
                let written = if at == 0 && t != 0 {
                    put.write(t, &record_header(0, PAD))
                } else {
                    Ok(())
                };
                written
                    .and_then(|()| put.write(at, &header))
                    .and_then(|()| put.write(at + RECORD_HEADER, &payload[..inline]))
                    .map_err(|_| {
                        PutFail::Failed(corrupt("the put's record does not fit the ring"))
                    })?;
                if joinable {
                    self.word(UNFINISHED).fetch_add(1, Relaxed);
                }
                // Publishing is this one store (and releases the put lock).
                if put.publish(tail.next(next)).is_err() {
                    if joinable {
                        self.word(UNFINISHED).fetch_sub(1, Relaxed);
                    }
                    return Err(PutFail::Failed(corrupt(
                        "the put's record does not fit the ring",
                    )));
                }
                self.wake(EMPTY_WAITERS, NOT_EMPTY);
                return Ok(());
            }
            drop(put);
            // Full (or the side socket is): wait until a get moves `HEAD`
            // past `head`, which was loaded after deciding there was no room.
            if matches!(wait, Deadline::Now) {
                return Err(PutFail::Full);
            }
            // This process's exit gave up on handing its backlog over: the
            // feeder's wait ends here, so that it can uncount what is lost.
            let abandoned = || self.backlog.is_abandoned();
            let moved = || self.ring.head() != head || self.is_closed() || abandoned();
            if !self.wait_until(&mut spin, FULL_WAITERS, NOT_FULL, wait, moved) || abandoned() {
                return Err(PutFail::Full);
            }
        }
    }

    /// Waits until `ready()` holds or the deadline passes: looks again for a
    /// few microseconds, then sleeps on the futex word `seq`, counted in
    /// `waiters` (see [`wake`](Self::wake)). `false` once the deadline passed.
    pub(super) fn wait_until(
        &self,
        spin: &mut Spin,
        waiters: usize,
        seq: usize,
        wait: Deadline,
        ready: impl Fn() -> bool,
    ) -> bool {
        while spin.spin() {
            if ready() {
                return true;
            }
        }
        self.word(waiters).fetch_add(1, SeqCst);
        let seen = self.word(seq).load(SeqCst);
        let timed_out = !ready() && {
            let left = wait.left();
            left == Some(Duration::ZERO)
                || matches!(
                    futex::wait(self.word(seq), seen, left),
                    futex::Slept::TimedOut
                )
        };
        !(timed_out && wait.left() == Some(Duration::ZERO))
    }

    /// Takes an item: its bytes into `bytes`, its descriptors returned.
    pub(super) fn get_record(
        &self,
        wait: Deadline,
        bytes: &mut Vec<u8>,
    ) -> Result<Taken, RecvTimeoutError> {
        let mut spin = Spin::new();
        loop {
            let Some(mut get) = self.ring.lock_get(wait) else {
                return Err(RecvTimeoutError::Timeout);
            };
            // Closed first: once the queue is seen closed, every item ever
            // put is in the `TAIL` loaded after (close takes the put lock).
            let closed = self.is_closed();
            let head = get.head();
            if head.until(get.seen_tail()) == 0 {
                get.refresh_tail();
            }
            if head.until(get.seen_tail()) != 0 {
                let result = self.take_record(get, head, bytes);
                self.wake(FULL_WAITERS, NOT_FULL);
                return result.map_err(RecvTimeoutError::Failed);
            }
            drop(get);
            if closed {
                return Err(RecvTimeoutError::Disconnected);
            }
            if matches!(wait, Deadline::Now) {
                return Err(RecvTimeoutError::Timeout);
            }
            // Empty: wait for a put (or close).
            let gets = head.count();
            let arrived = || self.ring.tail().count() != gets || self.is_closed();
            if !self.wait_until(&mut spin, EMPTY_WAITERS, NOT_EMPTY, wait, arrived) {
                return Err(RecvTimeoutError::Timeout);
            }
        }
    }

    /// Reads the record at `head` into `bytes` and advances past it, which
    /// releases the get lock.
    pub(super) fn take_record(
        &self,
        get: GetSide<'_>,
        head: Pos,
        bytes: &mut Vec<u8>,
    ) -> Result<Taken, Error> {
        let ring = self.ring.len();
        let read_header = |at: usize| -> Result<(usize, u32), Error> {
            let mut bytes = [0u8; RECORD_HEADER];
            get.read(at, &mut bytes)
                .map_err(|_| corrupt("record outside the ring's used part"))?;
            let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
            let flags = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
            Ok((len, flags))
        };
        let mut h = head.offset();
        let (mut len, mut flags) = read_header(h)?;
        if flags & PAD != 0 {
            h = 0;
            (len, flags) = read_header(h)?;
        }
        let inline = if flags & SPILLED != 0 { 0 } else { len };
        let end = h + RECORD_HEADER + align8(inline);
        if end > ring {
            return Err(corrupt("record longer than the ring"));
        }
        bytes.clear();
        get.read_append(h + RECORD_HEADER, inline, bytes)
            .map_err(|_| corrupt("record longer than the ring's used part"))?;
        let side = if flags & SIDE != 0 {
            recv_side(
                self.side_rx.as_fd(),
                head.count(),
                flags >> NUMBER_SHIFT,
                || self.ring.tail().count(),
            )
        } else {
            Ok(Vec::new())
        };
        let next = if end == ring { 0 } else { end };
        // Taking is this one store: the item is gone from the queue even if
        // its side message could not be had.
        get.advance(head.next(next))
            .map_err(|_| corrupt("record outside the ring's used part"))?;
        let mut fds = side.map_err(|e| Error::io("receiving an item's handles", e))?;
        let raw = flags & RAW != 0;
        if flags & SPILLED == 0 {
            return Ok(Taken { fds, raw });
        }
        if fds.is_empty() {
            return Err(corrupt("a large item's memfd is missing"));
        }
        let memfd = fds.remove(0);
        *bytes = wire::read_spill(&memfd, len as u64)
            .map_err(|e| Error::io("reading a large item", e))?;
        Ok(Taken { fds, raw })
    }
}

/// Where a record of `need` bytes goes, given `TAIL` and a head at or behind
/// `HEAD`; `None` if it does not fit now. A record never wraps: if it does
/// not fit before the end, it goes to offset 0 behind a `PAD` record.
pub(super) fn place(
    tail: Pos,
    head: Pos,
    need: usize,
    ring: usize,
    capacity: u32,
) -> Option<usize> {
    let count = head.until(tail);
    if capacity != 0 && count >= capacity {
        return None;
    }
    let (t, h) = (tail.offset(), head.offset());
    let fits_at_end = ring.checked_sub(t).is_some_and(|room| need <= room);
    if count == 0 {
        // Empty (`h == t`): anywhere, and back at the start once far along.
        return if need <= t && (t >= WRAP_EARLY || !fits_at_end) {
            Some(0)
        } else if fits_at_end {
            Some(t)
        } else {
            None
        };
    }
    if t > h {
        if fits_at_end {
            Some(t)
        } else if need <= h {
            Some(0)
        } else {
            None
        }
    } else if t < h && need <= h - t {
        Some(t)
    } else {
        None
    }
}

pub(super) fn record_header(len: u32, flags: u32) -> [u8; RECORD_HEADER] {
    let mut h = [0u8; RECORD_HEADER];
    h[..4].copy_from_slice(&len.to_le_bytes());
    h[4..].copy_from_slice(&flags.to_le_bytes());
    h
}
