//! [`Queue`] and [`JoinableQueue`]: multi-producer, multi-consumer queues
//! shared by any number of processes (Python's `multiprocessing.Queue`).
//!
//! Items are encoded by the putting process and copied into a ring buffer in
//! shared memory (a memfd, see [`crate::sys::shm`]); sleeping getters and
//! putters wait on futex words beside it. An item that carries handles
//! (descriptors), or that is too large for the ring, also sends a message on
//! a datagram socket pair owned by the queue: the descriptors (and, for a
//! large item, a memfd holding its bytes) travel there, tagged with the
//! item's sequence number and a message number kept in its record.
//!
//! The ring has two robust process-shared locks, as a Michael–Scott
//! two-lock queue: putters serialise on the put lock, getters on the get
//! lock, and a putter and a getter work at the same time on different bytes
//! (see [`crate::sys::ring`], which checks that each side only touches its
//! own part). The ring's state is two words, `tail` (where the next item
//! goes, and how many were ever put; stored only by putters) and `head`
//! (where the next item is read, and how many were ever taken; stored only
//! by getters), each changed by a single store at the very end of a put or
//! a get. A process killed at any point of a put or get therefore leaves
//! the ring consistent, and the lock it held is taken over by the next
//! process (see `sync::raw`). Each side keeps the other's word as last seen
//! and reloads it only when the ring looks full (or empty), so with one
//! putter and one getter the words' cache lines rarely move between CPUs.
//!
//! Sleepers use the usual protocol against lost wake-ups: a getter counts
//! itself in `EMPTY_WAITERS`, reads the `NOT_EMPTY` sequence word, looks at
//! `tail` once more and only then sleeps on `NOT_EMPTY`; a putter stores
//! `tail` and then reads `EMPTY_WAITERS`, and if anyone is counted takes the
//! count (swapping in 0), bumps `NOT_EMPTY` and wakes that many (all
//! sequentially consistent, so one of the two sees the other). Putters
//! waiting for room do the same with `head`, `FULL_WAITERS` and `NOT_FULL`.

use std::fmt;
use std::io::{self, IoSlice, IoSliceMut};
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, SeqCst};
use std::time::Duration;

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use serde::de::{DeserializeOwned, Error as _};
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::channel_error::{
    RecvError, RecvTimeoutError, SendError, SendTimeoutError, TryRecvError, TrySendError,
};
use crate::error::{Error, ErrorKind};
use crate::sync::RegionKind;
use crate::sys::futex;
use crate::sys::lock_word::Deadline;
use crate::sys::lock_word::Spin;
use crate::sys::ring::{self, GetSide, Pos, Ring};
use crate::wire::{self, OutFrame};

const KIND: RegionKind = RegionKind::new(b"mpQU", "multiproc::Queue");

// Words of the region, in 128-byte slots (see `sys::ring`). The first holds
// the standard magic (the standard lock at 8 is unused: the ring has two
// locks of its own) and words that every put or get reads but that seldom
// change.
/// Most items the queue holds (0: no limit but the ring's size).
const CAPACITY: usize = 24;
/// Non-zero once `close` was called.
const CLOSED: usize = 28;
/// Side messages ever numbered (see `send_side`).
const SIDE_SENT: usize = 32;
/// Non-zero for a `JoinableQueue`: every put counts an unfinished task.
const JOINABLE: usize = 36;
// Then the ring's words (`ring::WORDS_START..ring::WORDS_END`), then a slot
// per kind of sleeper, so that sleeping getters do not disturb putters and
// back.
/// Bumped when an item arrives (or the queue closes), for sleeping getters.
const NOT_EMPTY: usize = 640;
const EMPTY_WAITERS: usize = 644;
/// Bumped when an item leaves (or the queue closes), for sleeping putters.
const NOT_FULL: usize = 768;
const FULL_WAITERS: usize = 772;
/// Items put but not yet marked done (`JoinableQueue`).
const UNFINISHED: usize = 896;
/// Bumped when `UNFINISHED` reaches zero.
const ALL_DONE: usize = 900;
const ATOMICS_LEN: usize = 1024;
const _: () = assert!(JOINABLE + 4 <= ring::WORDS_START && NOT_EMPTY >= ring::WORDS_END);

/// The ring's default size: address space only, until items fill it.
const DEFAULT_RING: usize = 16 << 20;
/// Items whose encoding is larger than this go through a memfd.
const SPILL_OVER: usize = 1 << 20;
/// Past this offset, a putter looks whether the ring is empty (once per
/// [`LOOK_EVERY`] bytes) and if so goes back to offset 0, so that a queue
/// that keeps draining stays in the same few cache lines and pages.
const WRAP_EARLY: usize = 64 << 10;
const LOOK_EVERY: usize = 4 << 10;

const RECORD_HEADER: usize = 8;
/// Record flags (the low byte of the header's second word).
const PAD: u32 = 1;
const SIDE: u32 = 2;
const SPILLED: u32 = 4;
/// A side record's message number sits above the flags (its low 24 bits).
const NUMBER_SHIFT: u32 = 8;

/// A queue of `T` shared by processes: any number may put, any number may get.
///
/// `Queue` is a handle: `clone` it, pass it as an entry argument or send it
/// in a message, and every copy is the same queue.
///
/// ```
/// use multiproc::{process_entry, spawn, Queue};
///
/// #[process_entry]
/// fn produce(q: Queue<(u32, String)>, n: u32) {
///     q.put((n, "hello".to_string())).unwrap();
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let q = Queue::new()?;
/// let children: Vec<_> = (0..3).map(|n| spawn!(produce, q.clone(), n)).collect::<Result<_, _>>()?;
/// let mut got: Vec<_> = (0..3).map(|_| q.get()).collect::<Result<_, _>>()?;
/// got.sort();
/// assert_eq!(got[2], (2, "hello".to_string()));
/// for child in children {
///     child.join()?;
/// }
/// # Ok(())
/// # }
/// ```
///
/// # Caveats
/// - Order is FIFO per producer; items of different producers interleave.
/// - `len` is a snapshot, as Python's `qsize`.
/// - A process killed while putting or getting never wedges the queue for
///   the others (a lock it held is taken over within about 50 ms, and a
///   sleeper whose wake-up it was about to send looks again within 50 ms
///   anyway). What can
///   be lost is only that process's own item: the one it was putting is
///   either in the queue whole or not at all, and the one it was taking is
///   either gone with it or still in the queue whole, except that an item
///   carrying handles or too large for the ring whose side message the dead
///   process had already received is then dropped by the next `get`, which
///   reports an error for it. Nothing is ever delivered twice, and no other
///   item loses its handles or gets another's.
/// - A `JoinableQueue` item that no one will mark done stays unfinished:
///   one a getter took and died with (or whose `get` failed, above), or one
///   whose putter was killed in the instant between counting it and
///   publishing it. `join` then waits for ever and `join_timeout` until its
///   timeout, as in Python; call `task_done` for such items yourself.
/// - An item whose `Serialize` fails is handed back as `Disconnected(item)`.
/// - Items that carry handles, or are too large for the ring (over 1 MiB
///   encoded), also queue a message on the queue's socket, whose buffer holds
///   a few hundred of them: past that, such puts wait for gets as if the
///   queue were full, even an unbounded one.
/// - Waiters on a queue no one will put to again wait until their timeout
///   or for ever, as in Python; `close` wakes them.
pub struct Queue<T> {
    inner: Arc<Inner>,
    _item: PhantomData<fn(T) -> T>,
}

struct Inner {
    ring: Ring,
    /// Putters send side messages here; getters receive them on `side_rx`.
    side_tx: OwnedFd,
    side_rx: OwnedFd,
}

impl<T> Queue<T> {
    /// A handle over a queue's region and side socket pair.
    fn from_parts(
        region: crate::sys::shm::SharedRegion,
        side_tx: OwnedFd,
        side_rx: OwnedFd,
    ) -> Queue<T> {
        Queue {
            inner: Arc::new(Inner {
                ring: Ring::new(region),
                side_tx,
                side_rx,
            }),
            _item: PhantomData,
        }
    }
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Queue<T> {
        Queue {
            inner: Arc::clone(&self.inner),
            _item: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("len", &self.inner.len())
            .field("capacity", &self.inner.capacity())
            .field("closed", &self.inner.is_closed())
            .finish()
    }
}

impl<T: Serialize + DeserializeOwned> Queue<T> {
    /// A queue with no limit on the number of items (only on their total
    /// encoded size in flight, 16 MiB, past which `put` waits).
    pub fn new() -> Result<Queue<T>, Error> {
        Queue::create(0, false)
    }

    /// A queue that holds at most `capacity` items: `put` waits while it is full.
    pub fn bounded(capacity: usize) -> Result<Queue<T>, Error> {
        Queue::create(checked_capacity(capacity)?, false)
    }

    fn create(capacity: u32, joinable: bool) -> Result<Queue<T>, Error> {
        let region = crate::sync::create(KIND, ATOMICS_LEN, DEFAULT_RING, |r| {
            r.atomic_u32(CAPACITY).store(capacity, Relaxed);
            r.atomic_u32(JOINABLE).store(u32::from(joinable), Relaxed);
            Ring::init(r, DEFAULT_RING);
        })?;
        let region = Arc::try_unwrap(region)
            .map_err(|_| Error::new(ErrorKind::Io, "queue region is shared too early"))?;
        let (side_tx, side_rx) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| Error::io("creating a queue's socket pair", e.into()))?;
        Ok(Queue::from_parts(region, side_tx, side_rx))
    }

    /// Puts an item, waiting while the queue is full.
    pub fn put(&self, item: T) -> Result<(), SendError<T>> {
        self.put_wait(item, Deadline::Never).map_err(|e| match e {
            SendTimeoutError::Timeout(item) | SendTimeoutError::Disconnected(item) => {
                SendError(item)
            }
        })
    }

    /// Puts an item, waiting at most `timeout` for room.
    pub fn put_timeout(&self, item: T, timeout: Duration) -> Result<(), SendTimeoutError<T>> {
        self.put_wait(item, Deadline::after(timeout))
    }

    /// Puts an item if there is room now.
    pub fn try_put(&self, item: T) -> Result<(), TrySendError<T>> {
        self.put_wait(item, Deadline::Now).map_err(|e| match e {
            SendTimeoutError::Timeout(item) => TrySendError::Full(item),
            SendTimeoutError::Disconnected(item) => TrySendError::Disconnected(item),
        })
    }

    /// Takes the oldest item, waiting until there is one. `Disconnected`
    /// once the queue is closed and drained.
    pub fn get(&self) -> Result<T, RecvError> {
        self.get_wait(Deadline::Never).map_err(|e| match e {
            RecvTimeoutError::Disconnected | RecvTimeoutError::Timeout => RecvError::Disconnected,
            RecvTimeoutError::Failed(e) => RecvError::Failed(e),
        })
    }

    /// Takes the oldest item, waiting at most `timeout`.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.get_wait(Deadline::after(timeout))
    }

    /// Takes the oldest item if there is one now.
    pub fn try_get(&self) -> Result<T, TryRecvError> {
        self.get_wait(Deadline::Now).map_err(|e| match e {
            RecvTimeoutError::Timeout => TryRecvError::Empty,
            RecvTimeoutError::Disconnected => TryRecvError::Disconnected,
            RecvTimeoutError::Failed(e) => TryRecvError::Failed(e),
        })
    }

    fn put_wait(&self, item: T, wait: Deadline) -> Result<(), SendTimeoutError<T>> {
        let result = with_encoded(&item, |frame| {
            self.inner.put_bytes(frame.payload(), frame.fds(), wait)
        });
        match result {
            Ok(()) => Ok(()),
            Err(PutFail::Full) => Err(SendTimeoutError::Timeout(item)),
            Err(PutFail::Closed) => Err(SendTimeoutError::Disconnected(item)),
            // An item that cannot be encoded or stored cannot be put.
            Err(PutFail::Failed) => Err(SendTimeoutError::Disconnected(item)),
        }
    }

    fn get_wait(&self, wait: Deadline) -> Result<T, RecvTimeoutError> {
        let mut bytes = DECODER.take();
        let result = self
            .inner
            .get_bytes(wait, &mut bytes)
            .and_then(|fds| wire::decode(&bytes, fds).map_err(RecvTimeoutError::Failed));
        if bytes.capacity() <= SPILL_OVER {
            DECODER.set(bytes);
        }
        result
    }

    /// How many items are in the queue now (a snapshot, like Python's `qsize`).
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Whether the queue is empty now.
    pub fn is_empty(&self) -> bool {
        self.inner.len() == 0
    }

    /// Whether a bounded queue is at its capacity now (never for an unbounded one).
    pub fn is_full(&self) -> bool {
        let capacity = self.inner.capacity();
        capacity > 0 && self.inner.len() >= capacity
    }

    /// Closes the queue for every handle in every process: later puts fail
    /// with `Disconnected(item)`, gets take what is left and then report
    /// `Disconnected`. Waiters are woken.
    pub fn close(&self) {
        self.inner.close();
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }
}

thread_local! {
    /// Each thread encodes into its own reused buffer.
    static ENCODER: std::cell::Cell<Option<OutFrame>> = const { std::cell::Cell::new(None) };
    /// Each thread copies items out of the ring into its own reused buffer
    /// (given up after a large item).
    static DECODER: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Encodes `item` into this thread's reused frame, and puts the frame.
fn with_encoded<T: Serialize>(
    item: &T,
    put: impl FnOnce(&OutFrame) -> Result<(), PutFail>,
) -> Result<(), PutFail> {
    let mut frame = ENCODER.take().unwrap_or_default();
    frame.clear();
    let result = match frame.encode(item) {
        Ok(()) => put(&frame),
        Err(_) => Err(PutFail::Failed),
    };
    // Our copies of the item's handles must not outlive the put: a kept copy
    // of a connection's end would hide its peer's disconnection.
    frame.clear();
    ENCODER.set(Some(frame));
    result
}

fn checked_capacity(capacity: usize) -> Result<u32, Error> {
    u32::try_from(capacity)
        .ok()
        .filter(|&c| c > 0)
        .ok_or_else(|| Error::new(ErrorKind::Io, "capacity must be between 1 and 2^32-1"))
}

enum PutFail {
    Full,
    Closed,
    /// The item could not be encoded, or stored (an OS error); it is handed
    /// back as `Disconnected(item)`, as crossbeam's errors carry no reason.
    Failed,
}

fn corrupt(what: &str) -> Error {
    Error::new(ErrorKind::Decode, format!("queue is corrupt: {what}"))
}

const fn align8(n: usize) -> usize {
    (n + 7) & !7
}

impl Inner {
    fn word(&self, offset: usize) -> &AtomicU32 {
        self.ring.region().atomic_u32(offset)
    }

    fn capacity(&self) -> usize {
        self.word(CAPACITY).load(Relaxed) as usize
    }

    fn is_closed(&self) -> bool {
        self.word(CLOSED).load(Acquire) != 0
    }

    fn len(&self) -> usize {
        // Head first: the tail read after it is at or past it.
        let head = self.ring.head();
        head.until(self.ring.tail()) as usize
    }

    fn close(&self) {
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
    fn wake(&self, waiters: usize, seq: usize) {
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

    fn put_bytes(&self, payload: &[u8], fds: &[OwnedFd], wait: Deadline) -> Result<(), PutFail> {
        let joinable = self.word(JOINABLE).load(Relaxed) != 0;
        let ring = self.ring.len();
        let spilled = payload.len() > SPILL_OVER.min(ring / 4);
        let spill = if spilled {
            Some(wire::spill(payload).map_err(|_| PutFail::Failed)?)
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
                    .map_err(|_| PutFail::Failed)?
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
                    .map_err(|_| PutFail::Failed)?;
                if joinable {
                    self.word(UNFINISHED).fetch_add(1, Relaxed);
                }
                // Publishing is this one store (and releases the put lock).
                if put.publish(tail.next(next)).is_err() {
                    if joinable {
                        self.word(UNFINISHED).fetch_sub(1, Relaxed);
                    }
                    return Err(PutFail::Failed);
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
            let moved = || self.ring.head() != head || self.is_closed();
            if !self.wait_until(&mut spin, FULL_WAITERS, NOT_FULL, wait, moved) {
                return Err(PutFail::Full);
            }
        }
    }

    /// Waits until `ready()` holds or the deadline passes: looks again for a
    /// few microseconds, then sleeps on the futex word `seq`, counted in
    /// `waiters` (see [`wake`](Self::wake)). `false` once the deadline passed.
    fn wait_until(
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
    fn get_bytes(
        &self,
        wait: Deadline,
        bytes: &mut Vec<u8>,
    ) -> Result<Vec<OwnedFd>, RecvTimeoutError> {
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
    fn take_record(
        &self,
        get: GetSide<'_>,
        head: Pos,
        bytes: &mut Vec<u8>,
    ) -> Result<Vec<OwnedFd>, Error> {
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
        bytes.resize(inline, 0);
        get.read(h + RECORD_HEADER, bytes)
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
        if flags & SPILLED == 0 {
            return Ok(fds);
        }
        if fds.is_empty() {
            return Err(corrupt("a large item's memfd is missing"));
        }
        let memfd = fds.remove(0);
        *bytes = wire::read_spill(&memfd, len as u64)
            .map_err(|e| Error::io("reading a large item", e))?;
        Ok(fds)
    }
}

/// Where a record of `need` bytes goes, given `TAIL` and a head at or behind
/// `HEAD`; `None` if it does not fit now. A record never wraps: if it does
/// not fit before the end, it goes to offset 0 behind a `PAD` record.
fn place(tail: Pos, head: Pos, need: usize, ring: usize, capacity: u32) -> Option<usize> {
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

fn record_header(len: u32, flags: u32) -> [u8; RECORD_HEADER] {
    let mut h = [0u8; RECORD_HEADER];
    h[..4].copy_from_slice(&len.to_le_bytes());
    h[4..].copy_from_slice(&flags.to_le_bytes());
    h
}

/// Sends the side message of item `seq`, tagged with the item's number and
/// `number`, a count of side messages that tells it from one left with the
/// same `seq` by a putter that died before publishing its item.
/// `Ok(false)`: the socket is full.
fn send_side(
    sock: BorrowedFd<'_>,
    seq: u32,
    number: u32,
    spill: Option<&OwnedFd>,
    fds: &[OwnedFd],
) -> io::Result<bool> {
    let all: Vec<BorrowedFd<'_>> = spill.into_iter().chain(fds).map(|fd| fd.as_fd()).collect();
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(all.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&all)) {
        return Err(io::Error::other("too many handles in one item"));
    }
    let tag = side_tag(seq, number);
    loop {
        match rustix::net::sendmsg(
            sock,
            &[IoSlice::new(&tag)],
            &mut control,
            SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
        ) {
            Ok(_) => return Ok(true),
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
}

const SIDE_TAG: usize = 8;
/// The bits of a side message's number that its record keeps.
const NUMBER_MASK: u32 = (1 << (32 - NUMBER_SHIFT)) - 1;

fn side_tag(seq: u32, number: u32) -> [u8; SIDE_TAG] {
    let mut tag = [0u8; SIDE_TAG];
    tag[..4].copy_from_slice(&seq.to_le_bytes());
    tag[4..].copy_from_slice(&(number & NUMBER_MASK).to_le_bytes());
    tag
}

/// Receives the side message of item `seq`, numbered `number`. Messages
/// before it (left by putters that died between sending one and publishing
/// its item) are dropped with their descriptors; a later item's message is
/// left for that item (its tag is only peeked at), so one lost message
/// never costs another item its handles.
///
/// A later item is one put since `seq` (up to `tail()`, the count of items
/// ever put, asked after looking): that bounds how far ahead its number can
/// be, so a message left by a dead putter any number of items ago, even
/// past the counts' wrap-around, still counts as before.
fn recv_side(
    sock: BorrowedFd<'_>,
    seq: u32,
    number: u32,
    tail: impl Fn() -> u32,
) -> io::Result<Vec<OwnedFd>> {
    let want = side_tag(seq, number);
    let lost = || io::Error::other("the item's handles were lost");
    loop {
        let mut tag = [0u8; SIDE_TAG];
        let peeked = match rustix::net::recvmsg(
            sock,
            &mut [IoSliceMut::new(&mut tag)],
            &mut RecvAncillaryBuffer::new(&mut []),
            RecvFlags::DONTWAIT | RecvFlags::PEEK,
        ) {
            Ok(msg) => msg,
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => return Err(lost()),
            Err(e) => return Err(e.into()),
        };
        let mine = peeked.bytes == SIDE_TAG && tag == want;
        let got = u32::from_le_bytes([tag[0], tag[1], tag[2], tag[3]]);
        let ahead = got.wrapping_sub(seq);
        if !mine && peeked.bytes == SIDE_TAG && ahead != 0 && ahead <= tail().wrapping_sub(seq) {
            return Err(lost());
        }
        // Ours, or older (or garbage): take it, and its descriptors.
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(wire::MAX_FDS + 1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        loop {
            match rustix::net::recvmsg(
                sock,
                &mut [IoSliceMut::new(&mut tag)],
                &mut control,
                RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
            ) {
                Ok(_) => break,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let mut fds = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        if mine {
            return Ok(fds);
        }
    }
}

impl<T> Serialize for Queue<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let region = wire::push_fd(self.inner.ring.region().as_fd()).map_err(S::Error::custom)?;
        let tx = wire::push_fd(self.inner.side_tx.as_fd()).map_err(S::Error::custom)?;
        let rx = wire::push_fd(self.inner.side_rx.as_fd()).map_err(S::Error::custom)?;
        serializer.serialize_newtype_struct("multiproc::Queue", &(region, tx, rx))
    }
}

impl<'de, T> Deserialize<'de> for Queue<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Queue<T>, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename = "multiproc::Queue")]
        struct Wire((u32, u32, u32));
        let Wire((region, tx, rx)) = Wire::deserialize(deserializer)?;
        let take = |i| wire::take_fd(i).map_err(D::Error::custom);
        let (region, side_tx, side_rx) = (take(region)?, take(tx)?, take(rx)?);
        let region = crate::sync::open_region(region, KIND, Some(ATOMICS_LEN))
            .map_err(|e| D::Error::custom(wire::handle_error(e)))?;
        Ok(Queue::from_parts(region, side_tx, side_rx))
    }
}

/// A [`Queue`] that also counts unfinished items, as Python's
/// `JoinableQueue`: every `get` is matched by a [`task_done`](Self::task_done)
/// and [`join`](Self::join) waits until all are. (An item lost with a
/// killed process is never done: see [`Queue`]'s caveats.)
///
/// ```
/// use multiproc::{process_entry, spawn, JoinableQueue};
///
/// #[process_entry]
/// fn worker(q: JoinableQueue<u32>) -> u32 {
///     let mut sum = 0;
///     while let Ok(n) = q.get() {
///         sum += n;
///         q.task_done().unwrap();
///     }
///     sum
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let q = JoinableQueue::new()?;
/// let child = spawn!(worker, q.clone())?;
/// for n in 1..=10 {
///     q.put(n).unwrap();
/// }
/// q.join()?;          // every item was processed
/// q.close();          // lets the worker's `get` report `Disconnected`
/// assert_eq!(child.join()?, 55);
/// # Ok(())
/// # }
/// ```
pub struct JoinableQueue<T> {
    queue: Queue<T>,
}

impl<T> Clone for JoinableQueue<T> {
    fn clone(&self) -> JoinableQueue<T> {
        JoinableQueue {
            queue: self.queue.clone(),
        }
    }
}

impl<T> fmt::Debug for JoinableQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinableQueue")
            .field("queue", &self.queue)
            .field(
                "unfinished",
                &self.queue.inner.word(UNFINISHED).load(Relaxed),
            )
            .finish()
    }
}

impl<T> Serialize for JoinableQueue<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.queue.serialize(serializer)
    }
}

impl<'de, T> Deserialize<'de> for JoinableQueue<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<JoinableQueue<T>, D::Error> {
        Ok(JoinableQueue {
            queue: Queue::deserialize(deserializer)?,
        })
    }
}

impl<T> std::ops::Deref for JoinableQueue<T> {
    type Target = Queue<T>;

    /// Every `Queue` method; puts count as unfinished tasks (the queue
    /// itself knows it is joinable, in every process and handle).
    fn deref(&self) -> &Queue<T> {
        &self.queue
    }
}

impl<T: Serialize + DeserializeOwned> JoinableQueue<T> {
    /// An unbounded joinable queue.
    pub fn new() -> Result<JoinableQueue<T>, Error> {
        Ok(JoinableQueue {
            queue: Queue::create(0, true)?,
        })
    }

    /// A joinable queue of at most `capacity` items.
    pub fn bounded(capacity: usize) -> Result<JoinableQueue<T>, Error> {
        Ok(JoinableQueue {
            queue: Queue::create(checked_capacity(capacity)?, true)?,
        })
    }

    /// Marks one item taken with `get` as processed. An error if called more
    /// times than items were put.
    pub fn task_done(&self) -> Result<(), Error> {
        let word = self.queue.inner.word(UNFINISHED);
        let mut current = word.load(Acquire);
        loop {
            if current == 0 {
                return Err(Error::new(
                    ErrorKind::Io,
                    "task_done() called more times than there were items",
                ));
            }
            match word.compare_exchange_weak(current, current - 1, AcqRel, Acquire) {
                Ok(_) => break,
                Err(now) => current = now,
            }
        }
        if current == 1 {
            let done = self.queue.inner.word(ALL_DONE);
            done.fetch_add(1, SeqCst);
            futex::wake_all(done);
        }
        Ok(())
    }

    /// Waits until every item put has been marked done.
    pub fn join(&self) -> Result<(), Error> {
        self.join_wait(Deadline::Never).map(drop)
    }

    /// Like [`join`](Self::join) for at most `timeout`; `Ok(false)` if tasks
    /// are still unfinished then.
    pub fn join_timeout(&self, timeout: Duration) -> Result<bool, Error> {
        self.join_wait(Deadline::after(timeout))
    }

    fn join_wait(&self, wait: Deadline) -> Result<bool, Error> {
        let inner = &self.queue.inner;
        loop {
            let seq = inner.word(ALL_DONE).load(SeqCst);
            if inner.word(UNFINISHED).load(SeqCst) == 0 {
                return Ok(true);
            }
            let left = wait.left();
            if left == Some(Duration::ZERO) {
                return Ok(false);
            }
            futex::wait(inner.word(ALL_DONE), seq, left);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_go_after_the_tail_or_back_at_the_start() {
        let at = |(puts, t): (u32, usize), (gets, h): (u32, usize), need, cap| {
            place(Pos::new(puts, t), Pos::new(gets, h), need, 1 << 20, cap)
        };
        assert_eq!(at((0, 0), (0, 0), 16, 0), Some(0));
        assert_eq!(at((3, 48), (1, 16), 16, 0), Some(48), "after the tail");
        assert_eq!(at((3, 48), (1, 16), 16, 2), None, "at capacity");
        assert_eq!(at((3, (1 << 20) - 8), (1, 16), 16, 0), Some(0), "wraps");
        assert_eq!(
            at((3, (1 << 20) - 8), (1, 16), 24, 0),
            None,
            "no room before the head"
        );
        assert_eq!(
            at((3, 16), (1, 64), 48, 0),
            Some(16),
            "wrapped, before the head"
        );
        assert_eq!(at((3, 16), (1, 64), 56, 0), None);
        assert_eq!(at((3, 64), (1, 64), 8, 0), None, "full");
        // Empty: back at the start only once far along (or when it must).
        assert_eq!(at((5, 4096), (5, 4096), 16, 0), Some(4096));
        assert_eq!(at((5, WRAP_EARLY), (5, WRAP_EARLY), 16, 0), Some(0));
        assert_eq!(
            at((5, WRAP_EARLY), (5, WRAP_EARLY), WRAP_EARLY + 8, 0),
            Some(WRAP_EARLY)
        );
    }

    #[test]
    fn a_getter_whose_wake_up_was_lost_still_gets_the_item() {
        // A putter killed after publishing its item and taking the sleepers'
        // count, but before its wake-up call, leaves a getter asleep on a
        // queue that holds an item. Here: take the count, then put (which
        // then sees no one to wake).
        let q = Queue::<u32>::new().unwrap();
        let getter = q.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tid_tx.send(rustix::thread::gettid().as_raw_nonzero().get());
            tx.send(getter.get())
        });
        let tid = tid_rx.recv().unwrap();
        // Counted as a sleeper, and asleep (its only sleep is on the futex).
        let asleep = || {
            let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
            stat.as_bytes()[stat.rfind(')').unwrap() + 2] == b'S'
        };
        let waiters = q.inner.word(EMPTY_WAITERS);
        while waiters.load(SeqCst) == 0 || !asleep() {
            std::thread::yield_now();
        }
        waiters.swap(0, SeqCst);
        q.put(7).unwrap();
        let got = rx.recv_timeout(Duration::from_secs(20));
        assert_eq!(got.expect("the getter slept on").unwrap(), 7);
    }

    fn memfd_of(len: usize) -> OwnedFd {
        wire::spill(&vec![0; len]).unwrap()
    }

    fn sizes(fds: &[OwnedFd]) -> Vec<i64> {
        fds.iter()
            .map(|fd| rustix::fs::fstat(fd).unwrap().st_size)
            .collect()
    }

    #[test]
    fn side_messages_of_dead_putters_are_dropped_and_later_ones_kept() {
        let (tx, rx) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        // Item 5's putter died after sending; the next put of item 5 sent again.
        assert!(send_side(tx.as_fd(), 5, 1, None, &[memfd_of(1)]).unwrap());
        assert!(send_side(tx.as_fd(), 5, 2, None, &[memfd_of(2)]).unwrap());
        // Item 6's message was taken by a getter that died; item 7's is there.
        assert!(send_side(tx.as_fd(), 7, 3, None, &[memfd_of(3)]).unwrap());
        let tail = || 8;
        assert_eq!(sizes(&recv_side(rx.as_fd(), 5, 2, tail).unwrap()), [2]);
        assert!(recv_side(rx.as_fd(), 6, 9, tail).is_err());
        assert_eq!(sizes(&recv_side(rx.as_fd(), 7, 3, tail).unwrap()), [3]);
        assert!(recv_side(rx.as_fd(), 8, 4, tail).is_err());
        // Left by a putter that died 3 billion items ago (the counts wrapped
        // around since): still before, so dropped rather than waited for.
        let now = 5u32.wrapping_add(3_000_000_000);
        assert!(send_side(tx.as_fd(), 5, 5, None, &[memfd_of(5)]).unwrap());
        assert!(send_side(tx.as_fd(), now, 6, None, &[memfd_of(6)]).unwrap());
        let tail = || now.wrapping_add(1);
        assert_eq!(sizes(&recv_side(rx.as_fd(), now, 6, tail).unwrap()), [6]);
    }
}
