//! A queue's ring buffer, written by putters and read by getters at once.
//!
//! The ring is the data part of a [`SharedRegion`], of [`Ring::len`] bytes.
//! Two 64-bit words say which of its bytes are whose: `TAIL` (low 32 bits:
//! the offset where the next put writes; high 32: puts ever published) and
//! `HEAD` (the offset where the next get reads; gets ever finished). The
//! *used* part is the circular interval from `HEAD`'s offset to `TAIL`'s:
//! empty when the two counts agree, the whole ring when they differ and the
//! offsets agree. The rest is *free*.
//!
//! Putters hold the put lock, getters the get lock (robust process-shared
//! locks, see [`crate::sys::lock_word`]). Only a putter stores `TAIL` and only a
//! getter stores `HEAD`, each with one store that hands the bytes it wrote
//! (or read) over to the other side. A putter writes free bytes only, a
//! getter reads used bytes only: [`PutSide::write`] and [`GetSide::read`]
//! check it against the words before copying, and [`PutSide::publish`] and
//! [`GetSide::advance`] only move a word across bytes its side owned. So the
//! two sides never touch the same byte at once, and a process killed at any
//! point leaves both words describing whole records.
//!
//! Each side also keeps, next to its lock, the other side's word as it last
//! loaded it (`SEEN_HEAD`, `SEEN_TAIL`). The other side only ever moves its
//! word forward, which only grows what this side owns, so a stale copy is
//! safe to act on; the queue reloads it mainly when the copy says the ring
//! is full (putter) or empty (getter). The copies live in the region, one
//! per side rather than one per process, so a copy never lags behind this
//! side's own word: it is at most a ring's worth of records old, and the
//! 32-bit counts cannot wrap around between it and the truth. With one
//! putter and one getter, the only cache lines that move between them are
//! then the ring's bytes and `TAIL` or `HEAD` when one side catches up with
//! the other.

use std::ptr;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};

use crate::sys::lock_word::Deadline;
use crate::sys::lock_word::{Acquisition, RawLock};
use crate::sys::shm::SharedRegion;

// The ring's words, 128 bytes apart: one line per writer, and none in the
// same 128-byte pair of lines as another's (the L2 fetches lines in pairs, so
// a reader of one line takes its neighbour too), so that a side's writes
// never take a line the other side keeps reading.
/// The put lock (its word, then its owner tag), `SEEN_HEAD` and the ring's length.
const PUT_LOCK: usize = 128;
const PUT_TAG: usize = 136;
const SEEN_HEAD: usize = 144;
const LEN: usize = 152;
/// The get lock, its tag, `SEEN_TAIL`.
const GET_LOCK: usize = 256;
const GET_TAG: usize = 264;
const SEEN_TAIL: usize = 272;
const TAIL: usize = 384;
const HEAD: usize = 512;
/// The ring's words are at and above this offset, and below [`WORDS_END`].
pub(crate) const WORDS_START: usize = 128;
/// The first byte of a region's atomics part that the ring does not use.
pub(crate) const WORDS_END: usize = 640;

/// A position in the ring: an offset and how many records came before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pos(u64);

impl Pos {
    /// The position of record number `count`, at `offset`.
    #[cfg(test)]
    pub(crate) fn new(count: u32, offset: usize) -> Pos {
        Pos(u64::from(count) << 32 | (offset as u32) as u64)
    }

    /// The offset of the record at this position.
    pub(crate) fn offset(self) -> usize {
        (self.0 as u32) as usize
    }

    /// How many records were ever put (`TAIL`) or taken (`HEAD`).
    pub(crate) fn count(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// The position after one more record, whose successor starts at `offset`.
    pub(crate) fn next(self, offset: usize) -> Pos {
        Pos(u64::from(self.count().wrapping_add(1)) << 32 | (offset as u32) as u64)
    }

    /// Records between `self` (a head) and `tail`.
    pub(crate) fn until(self, tail: Pos) -> u32 {
        tail.count().wrapping_sub(self.count())
    }
}

/// A read or write outside the part of the ring that the side owns, or words
/// that describe no consistent ring (the queue is corrupt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Misplaced;

/// A queue's shared region seen as a ring.
#[derive(Debug)]
pub(crate) struct Ring {
    region: SharedRegion,
    /// Read once: every access of this process checks against the same length.
    len: usize,
}

impl Ring {
    /// Sets up the ring's words in a new `region` (zero-filled, not yet
    /// seen by another process): a ring of `len` bytes, empty.
    pub(crate) fn init(region: &SharedRegion, len: usize) {
        region
            .atomic_u32(LEN)
            .store(u32::try_from(len).unwrap_or(u32::MAX), Relaxed);
    }

    /// The ring in `region`, which [`init`](Self::init) set up (here or in
    /// another process). A length that a peer could have lied about is cut
    /// to the region's data part.
    pub(crate) fn new(region: SharedRegion) -> Ring {
        let len = (region.atomic_u32(LEN).load(Relaxed) as usize).min(region.data_len()) & !7;
        Ring { region, len }
    }

    /// The region, for the queue's own words.
    pub(crate) fn region(&self) -> &SharedRegion {
        &self.region
    }

    /// The ring's size in bytes (a multiple of 8).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn word(&self, offset: usize) -> &AtomicU64 {
        self.region.atomic_u64(offset)
    }

    /// `TAIL` now (a sequentially consistent load, for sleepers' checks).
    pub(crate) fn tail(&self) -> Pos {
        Pos(self.word(TAIL).load(SeqCst))
    }

    /// `HEAD` now (a sequentially consistent load, for sleepers' checks).
    pub(crate) fn head(&self) -> Pos {
        Pos(self.word(HEAD).load(SeqCst))
    }

    /// Takes the put lock, waiting as `wait` allows; `None`: timed out.
    pub(crate) fn lock_put(&self, wait: Deadline) -> Option<PutSide<'_>> {
        let lock = RawLock::at(&self.region, PUT_LOCK, PUT_TAG);
        // Not `then_some`: it would build the side (whose drop unlocks)
        // even when the lock is another's, and drop it at once.
        if acquire(lock, wait) {
            Some(PutSide { ring: self, lock })
        } else {
            None
        }
    }

    /// Takes the get lock, waiting as `wait` allows; `None`: timed out.
    pub(crate) fn lock_get(&self, wait: Deadline) -> Option<GetSide<'_>> {
        let lock = RawLock::at(&self.region, GET_LOCK, GET_TAG);
        // Not `then_some`, as in `lock_put`.
        if acquire(lock, wait) {
            Some(GetSide { ring: self, lock })
        } else {
            None
        }
    }

    /// How many used bytes lie between `head` and `tail`; `None` if the
    /// two describe no ring of this length.
    fn used(&self, head: Pos, tail: Pos) -> Option<usize> {
        let len = self.len;
        let (h, t) = (head.offset(), tail.offset());
        let count = head.until(tail) as usize;
        if h >= len || t >= len || count > len {
            return None;
        }
        if count == 0 {
            return (h == t).then_some(0);
        }
        Some(if t > h { t - h } else { len - h + t })
    }

    /// Whether `at..at + n` lies in the circular interval of `span` bytes
    /// starting at `start`.
    fn within(&self, start: usize, span: usize, at: usize, n: usize) -> bool {
        let len = self.len;
        if at.checked_add(n).is_none_or(|end| end > len) {
            return false;
        }
        if n == 0 || span == len {
            return true;
        }
        let from = if at >= start {
            at - start
        } else {
            at + len - start
        };
        from + n <= span
    }

    /// How far `to` lies past `from` (a whole lap if at the same offset).
    fn distance(&self, from: usize, to: usize) -> usize {
        if to > from {
            to - from
        } else {
            self.len - from + to
        }
    }
}

/// Acquires `lock`. A process killed holding it left the ring whole (each
/// word changes by one store), so its death is no error: the lock is free
/// again and taken over.
fn acquire(lock: RawLock<'_>, wait: Deadline) -> bool {
    loop {
        match lock.acquire(wait) {
            Acquisition::Acquired => return true,
            Acquisition::TimedOut => return false,
            Acquisition::OwnerDied(_) => continue,
        }
    }
}

/// Proof that this process holds the put lock of a ring: it may write the
/// ring's free bytes and move `TAIL`. Unlocks on drop.
#[derive(Debug)]
pub(crate) struct PutSide<'a> {
    ring: &'a Ring,
    lock: RawLock<'a>,
}

impl PutSide<'_> {
    /// `TAIL`, which only put-lock holders store.
    pub(crate) fn tail(&self) -> Pos {
        Pos(self.ring.word(TAIL).load(Acquire))
    }

    /// `HEAD` as a putter last loaded it: at or behind the real one.
    pub(crate) fn seen_head(&self) -> Pos {
        Pos(self.ring.word(SEEN_HEAD).load(Acquire))
    }

    /// Loads `HEAD` (for when [`seen_head`](Self::seen_head) leaves too
    /// little room) and keeps it as the new seen head.
    pub(crate) fn refresh_head(&mut self) -> Pos {
        let head = self.ring.word(HEAD).load(Acquire);
        self.ring.word(SEEN_HEAD).store(head, Release);
        Pos(head)
    }

    /// The free part: where it starts, and its length.
    fn free(&self) -> Result<(usize, usize), Misplaced> {
        let tail = self.tail();
        let used = self.ring.used(self.seen_head(), tail).ok_or(Misplaced)?;
        Ok((tail.offset(), self.ring.len - used))
    }

    /// Copies `bytes` into the ring at offset `at`, which must lie in the
    /// free part (by `TAIL` and the seen head).
    pub(crate) fn write(&mut self, at: usize, bytes: &[u8]) -> Result<(), Misplaced> {
        let (start, span) = self.free()?;
        if !self.ring.within(start, span, at, bytes.len()) {
            return Err(Misplaced);
        }
        // SAFETY: `at + bytes.len() <= ring.len <= data_len` (checked by
        // `within`; `Ring::new` caps the length), so the destination is in
        // the mapping, which outlives `self.ring`. No Rust reference to a
        // ring's bytes ever exists (queues never make a `DataGuard`), so
        // `bytes` cannot overlap them. No data race: in this process, only
        // put-lock holders (us alone, by the lock) write ring bytes, and
        // get-lock holders only read used bytes, below `TAIL`, which only we
        // move, and at or past `HEAD`. The range lies in the free part by
        // `TAIL` and a value of `HEAD` loaded with `Acquire` (directly or via
        // `SEEN_HEAD`); `HEAD` only moves forward, so those bytes are still
        // free, and every read of them by a getter happened before the
        // `Release` store of `HEAD` that freed them. Other processes keep
        // the same protocol (they run this same code).
        unsafe {
            ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.ring.region.data_ptr().add(at),
                bytes.len(),
            );
        }
        Ok(())
    }

    /// Publishes one record: `TAIL` becomes `to`, one record further, which
    /// hands the bytes from the old `TAIL` to `to` (all free until now) over
    /// to getters. One store; the lock is released after it.
    pub(crate) fn publish(self, to: Pos) -> Result<(), Misplaced> {
        let tail = self.tail();
        let (start, span) = self.free()?;
        if to.count() != tail.count().wrapping_add(1)
            || to.offset() >= self.ring.len
            || self.ring.distance(start, to.offset()) > span
        {
            return Err(Misplaced);
        }
        // Sequentially consistent: a getter that registers as a sleeper and
        // then looks at `TAIL` either sees this or is seen by our look at its
        // sleeper count (see `queue.rs`).
        self.ring.word(TAIL).store(to.0, SeqCst);
        Ok(())
    }
}

impl Drop for PutSide<'_> {
    fn drop(&mut self) {
        self.lock.release();
    }
}

/// Proof that this process holds the get lock of a ring: it may read the
/// ring's used bytes and move `HEAD`. Unlocks on drop.
#[derive(Debug)]
pub(crate) struct GetSide<'a> {
    ring: &'a Ring,
    lock: RawLock<'a>,
}

impl GetSide<'_> {
    /// `HEAD`, which only get-lock holders store.
    pub(crate) fn head(&self) -> Pos {
        Pos(self.ring.word(HEAD).load(Acquire))
    }

    /// `TAIL` as a getter last loaded it: at or behind the real one.
    pub(crate) fn seen_tail(&self) -> Pos {
        Pos(self.ring.word(SEEN_TAIL).load(Acquire))
    }

    /// Loads `TAIL` (for when [`seen_tail`](Self::seen_tail) says the ring
    /// is empty) and keeps it as the new seen tail.
    pub(crate) fn refresh_tail(&mut self) -> Pos {
        let tail = self.ring.word(TAIL).load(Acquire);
        self.ring.word(SEEN_TAIL).store(tail, Release);
        Pos(tail)
    }

    /// The used part: where it starts, and its length.
    fn used(&self) -> Result<(usize, usize), Misplaced> {
        let head = self.head();
        let used = self.ring.used(head, self.seen_tail()).ok_or(Misplaced)?;
        Ok((head.offset(), used))
    }

    /// Copies ring bytes from offset `at` into `out`; they must lie in the
    /// used part (by `HEAD` and the seen tail).
    pub(crate) fn read(&self, at: usize, out: &mut [u8]) -> Result<(), Misplaced> {
        let (start, span) = self.used()?;
        if !self.ring.within(start, span, at, out.len()) {
            return Err(Misplaced);
        }
        // SAFETY: in bounds of the mapping as in `PutSide::write`, and `out`
        // is a Rust reference, so not ring bytes. No data race: in this
        // process only put-lock holders write ring bytes, and only free ones,
        // above `HEAD` (which only get-lock holders, that is us, move) and
        // before `TAIL`. The range lies in the used part by `HEAD` and a
        // value of `TAIL` loaded with `Acquire` (directly or via
        // `SEEN_TAIL`); `TAIL` only moves forward, so the bytes are still
        // used, and their writes happened before the `SeqCst` store of `TAIL`
        // that published them. Other processes keep the same protocol.
        unsafe {
            ptr::copy_nonoverlapping(
                self.ring.region.data_ptr().add(at).cast_const(),
                out.as_mut_ptr(),
                out.len(),
            );
        }
        Ok(())
    }

    /// Like [`read`](Self::read), for `n` bytes appended to `out` without
    /// zero-filling them first.
    pub(crate) fn read_append(
        &self,
        at: usize,
        n: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), Misplaced> {
        let (start, span) = self.used()?;
        if !self.ring.within(start, span, at, n) {
            return Err(Misplaced);
        }
        out.reserve(n);
        let len = out.len();
        // SAFETY: the source is in bounds of the mapping and free of data
        // races as in `read`; the destination is `out`'s spare capacity,
        // at least `n` bytes after `reserve`, which is not ring bytes (no
        // Rust reference to a ring's bytes exists). The copy initialises
        // those `n` bytes, so the new length covers only initialised ones.
        unsafe {
            ptr::copy_nonoverlapping(
                self.ring.region.data_ptr().add(at).cast_const(),
                out.as_mut_ptr().add(len),
                n,
            );
            out.set_len(len + n);
        }
        Ok(())
    }

    /// Takes one record: `HEAD` becomes `to`, one record further, which
    /// hands the bytes from the old `HEAD` to `to` (all used until now) back
    /// to putters. One store; the lock is released after it.
    pub(crate) fn advance(self, to: Pos) -> Result<(), Misplaced> {
        let head = self.head();
        let (start, span) = self.used()?;
        if to.count() != head.count().wrapping_add(1)
            || to.offset() >= self.ring.len
            || self.ring.distance(start, to.offset()) > span
        {
            return Err(Misplaced);
        }
        // Sequentially consistent, for sleeping putters as `publish` is for getters.
        self.ring.word(HEAD).store(to.0, SeqCst);
        Ok(())
    }
}

impl Drop for GetSide<'_> {
    fn drop(&mut self) {
        self.lock.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(len: usize) -> Ring {
        let region = SharedRegion::create("ring-test", WORDS_END, len).unwrap();
        Ring::init(&region, len);
        Ring::new(region)
    }

    fn pos(count: u32, offset: usize) -> Pos {
        Pos::new(count, offset)
    }

    #[test]
    fn a_lock_attempt_that_fails_leaves_the_lock_to_its_holder() {
        let ring = ring(64);
        let put = ring.lock_put(Deadline::Now).unwrap();
        assert!(ring.lock_put(Deadline::Now).is_none());
        assert!(ring.lock_put(Deadline::Now).is_none(), "still held");
        drop(put);
        let get = ring.lock_get(Deadline::Now).unwrap();
        assert!(ring.lock_get(Deadline::Now).is_none());
        assert!(ring.lock_get(Deadline::Now).is_none(), "still held");
        drop(get);
        assert!(ring.lock_put(Deadline::Now).is_some());
        assert!(ring.lock_get(Deadline::Now).is_some());
    }

    #[test]
    fn each_side_reaches_only_its_own_part() {
        let ring = ring(64);
        let mut put = ring.lock_put(Deadline::Now).unwrap();
        put.write(0, &[1; 16]).unwrap();
        put.write(56, &[2; 8]).unwrap();
        assert_eq!(put.write(60, &[0; 8]), Err(Misplaced), "past the end");
        put.publish(pos(1, 16)).unwrap();
        let mut get = ring.lock_get(Deadline::Now).unwrap();
        let mut out = [0u8; 8];
        // The seen tail is stale (empty) until refreshed.
        assert_eq!(get.read(0, &mut out), Err(Misplaced));
        assert_eq!(get.refresh_tail(), pos(1, 16));
        get.read(8, &mut out).unwrap();
        assert_eq!(out, [1; 8]);
        assert_eq!(get.read(16, &mut out), Err(Misplaced), "not yet put");
        // The putter may not touch what the getter still owns.
        let mut put = ring.lock_put(Deadline::Now).unwrap();
        assert_eq!(put.write(8, &[3; 8]), Err(Misplaced));
        put.write(16, &[3; 48]).unwrap();
        assert_eq!(put.write(0, &[3; 8]), Err(Misplaced), "stale head");
        assert_eq!(
            put.publish(pos(2, 8)),
            Err(Misplaced),
            "beyond the free part"
        );
        get.advance(pos(1, 16)).unwrap();
        let mut put = ring.lock_put(Deadline::Now).unwrap();
        assert_eq!(put.refresh_head(), pos(1, 16));
        // Free now: 16..64 and 0..16, the whole ring.
        put.write(0, &[4; 16]).unwrap();
        put.publish(pos(2, 16)).unwrap();
        let mut get = ring.lock_get(Deadline::Now).unwrap();
        get.refresh_tail();
        let mut all = [0u8; 64];
        get.read(0, &mut all).unwrap();
        // Appended without zero-filling: exactly the ring's bytes, after
        // what was there; nothing outside the used part.
        let mut out = vec![9];
        get.read_append(0, 16, &mut out).unwrap();
        assert_eq!(out, [[9].as_slice(), &[4; 16]].concat());
        assert_eq!(
            get.read_append(60, 8, &mut out),
            Err(Misplaced),
            "past the end"
        );
        assert_eq!(out.len(), 17, "a refused read appends nothing");
        assert_eq!(
            get.advance(pos(3, 16)),
            Err(Misplaced),
            "two records at once"
        );
    }

    #[test]
    fn a_lock_is_held_until_its_side_is_dropped() {
        let ring = ring(64);
        let put = ring.lock_put(Deadline::Now).unwrap();
        assert!(ring.lock_put(Deadline::Now).is_none());
        let get = ring.lock_get(Deadline::Now).unwrap();
        assert!(ring.lock_get(Deadline::Now).is_none());
        drop(put);
        drop(get);
        assert!(ring.lock_put(Deadline::Now).is_some());
        assert!(ring.lock_get(Deadline::Now).is_some());
    }

    #[test]
    fn inconsistent_words_are_refused() {
        let ring = ring(64);
        // Counts equal but offsets apart: no ring looks like that.
        ring.word(TAIL).store(pos(0, 8).0, Relaxed);
        let mut put = ring.lock_put(Deadline::Now).unwrap();
        assert_eq!(put.write(8, &[0; 8]), Err(Misplaced));
        drop(put);
        // More records than bytes.
        ring.word(TAIL).store(pos(65, 0).0, Relaxed);
        let mut get = ring.lock_get(Deadline::Now).unwrap();
        get.refresh_tail();
        assert_eq!(get.read(0, &mut [0; 8]), Err(Misplaced));
    }
}
