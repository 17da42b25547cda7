//! Where everything lives in a queue's shared region: the words every
//! process reads (capacity, closed, joinable), the ring's own words
//! (`sys::ring`), one cache line per kind of sleeper, and the sizes that
//! decide where an item goes.

use crate::sync::RegionKind;
use crate::sys::ring;

pub(super) const KIND: RegionKind = RegionKind::new(b"mpQU", "multiproc::Queue");

// Words of the region, in 128-byte slots (see `sys::ring`). The first holds
// the standard magic (the standard lock at 8 is unused: the ring has two
// locks of its own) and words that every put or get reads but that seldom
// change.
/// Most items the queue holds (0: no limit but the ring's size).
pub(super) const CAPACITY: usize = 24;
/// Non-zero once `close` was called.
pub(super) const CLOSED: usize = 28;
/// Side messages ever numbered (see `send_side`).
pub(super) const SIDE_SENT: usize = 32;
/// Non-zero for a `JoinableQueue`: every put counts an unfinished task.
pub(super) const JOINABLE: usize = 36;
// Then the ring's words (`ring::WORDS_START..ring::WORDS_END`), then a slot
// per kind of sleeper, so that sleeping getters do not disturb putters and
// back.
/// Bumped when an item arrives (or the queue closes), for sleeping getters.
pub(super) const NOT_EMPTY: usize = 640;
pub(super) const EMPTY_WAITERS: usize = 644;
/// Bumped when an item leaves (or the queue closes), for sleeping putters.
pub(super) const NOT_FULL: usize = 768;
pub(super) const FULL_WAITERS: usize = 772;
/// Items put but not yet marked done (`JoinableQueue`).
pub(super) const UNFINISHED: usize = 896;
/// Bumped when `UNFINISHED` reaches zero.
pub(super) const ALL_DONE: usize = 900;
pub(super) const ATOMICS_LEN: usize = 1024;
const _: () = assert!(JOINABLE + 4 <= ring::WORDS_START && NOT_EMPTY >= ring::WORDS_END);

/// The ring's default size: address space only, until items fill it.
pub(super) const DEFAULT_RING: usize = 16 << 20;
/// Items whose encoding is larger than this go through a memfd.
pub(super) const SPILL_OVER: usize = 1 << 20;
/// Past this offset, a putter looks whether the ring is empty (once per
/// [`LOOK_EVERY`] bytes) and if so goes back to offset 0, so that a queue
/// that keeps draining stays in the same few cache lines and pages.
pub(super) const WRAP_EARLY: usize = 64 << 10;
pub(super) const LOOK_EVERY: usize = 4 << 10;
