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

use std::any::{Any, TypeId};
use std::fmt;
use std::marker::PhantomData;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use rustix::net::{AddressFamily, SocketFlags, SocketType};
use serde::de::{DeserializeOwned, Error as _};
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::channel_error::{
    RecvError, RecvTimeoutError, SendError, SendTimeoutError, TryRecvError, TrySendError,
};
use crate::error::{Error, ErrorKind};
use crate::sys::lock_word::Deadline;
use crate::sys::ring::Ring;

mod backlog;
#[cfg(feature = "test-hooks")]
mod fuzz;
mod joinable;
mod layout;
mod records;
mod side;

use crate::wire::{self, OutFrame};
#[cfg(feature = "test-hooks")]
pub use backlog::set_queue_exit_stall;
#[cfg(feature = "test-hooks")]
pub(crate) use fuzz::fuzz_records;
pub use joinable::JoinableQueue;
use layout::*;
use records::*;
use side::*;

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
/// - An item whose `Serialize` fails (or that cannot be stored: an OS
///   error) is handed back as `Failed(item, error)`, the error saying why;
///   the queue is unaffected.
/// - A put on an unbounded queue never waits, as in Python: an item that
///   finds the shared ring (16 MiB) or the side socket (a few hundred items
///   with handles or over 1 MiB) full waits in the putting process's memory,
///   and a feeder thread moves it in as gets make room, keeping that
///   process's order. Such items are not counted by `len`; a process killed
///   before handing them over loses them (Python's do too); a process that
///   exits first hands them over, waiting while gets make room (giving up,
///   with a word on stderr, after 30 s in which nothing was taken; a
///   `JoinableQueue` then no longer counts the items given up as
///   unfinished, so its `join` does not wait for them). On a
///   bounded queue, a full ring or socket makes `put` wait, as it should.
/// - Items are encoded with serde, except that a `Vec<u8>` item goes in as
///   its raw bytes, as on a [`Connection`](crate::Connection) (which is why
///   putting and getting need `T: 'static`). A `Vec<u8>` *inside* an item
///   (a struct's field) goes byte by byte through the codec, several times
///   slower than raw bytes.
/// - Waiters on a queue no one will put to again wait until their timeout
///   or for ever, as in Python; `shutdown` wakes them.
pub struct Queue<T> {
    inner: Arc<Inner>,
    /// This handle puts no more ([`close`](Queue::close)).
    closed: AtomicBool,
    _item: PhantomData<fn(T) -> T>,
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
                backlog: backlog::Backlog::default(),
            }),
            closed: AtomicBool::new(false),
            _item: PhantomData,
        }
    }
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Queue<T> {
        Queue {
            inner: Arc::clone(&self.inner),
            closed: AtomicBool::new(false),
            _item: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("len", &self.inner.len())
            .field("capacity", &self.inner.capacity())
            .field("shut_down", &self.inner.is_closed())
            .field("closed", &self.closed.load(Relaxed))
            .finish()
    }
}

impl<T: Serialize + DeserializeOwned> Queue<T> {
    /// A queue with no limit on the number of items: `put` never waits
    /// (memory is the limit, as in Python; see the caveats).
    pub fn new() -> Result<Queue<T>, Error> {
        Queue::create(0, false)
    }

    /// A queue that holds at most `capacity` items: `put` waits while it is full.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for a capacity of 0 or above
    /// `u32::MAX` (Python's `maxsize=0` means unbounded: that is
    /// [`new`](Self::new) here).
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
}

/// Putting and getting. `T: 'static`, so that a `Vec<u8>` item can be told
/// apart and moved as raw bytes (as a [`Connection`](crate::Connection)
/// does) rather than byte by byte through the codec.
impl<T: Serialize + DeserializeOwned + 'static> Queue<T> {
    /// Puts an item, waiting while the queue is full.
    ///
    /// Fails with [`SendError::Disconnected`] once this handle is closed or
    /// the queue shut down, and with [`SendError::Failed`] when the item
    /// cannot be put (its `Serialize` fails, or an OS error); either way the
    /// item is handed back.
    ///
    /// ```
    /// use multiproc::{Queue, SendError};
    /// # fn main() -> multiproc::Result<()> {
    /// let q = Queue::new()?;
    /// q.shutdown();
    /// assert!(matches!(q.put(1), Err(SendError::Disconnected(1))));
    /// # Ok(())
    /// # }
    /// ```
    pub fn put(&self, item: T) -> Result<(), SendError<T>> {
        self.put_wait(item, Deadline::Never).map_err(|e| match e {
            SendTimeoutError::Timeout(item) | SendTimeoutError::Disconnected(item) => {
                SendError::Disconnected(item)
            }
            SendTimeoutError::Failed(item, e) => SendError::Failed(item, e),
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
            SendTimeoutError::Failed(item, e) => TrySendError::Failed(item, e),
        })
    }

    /// Takes the oldest item, waiting until there is one. `Disconnected`
    /// once the queue is shut down and drained.
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
        if self.closed.load(Relaxed) {
            return Err(SendTimeoutError::Disconnected(item));
        }
        let mut slot = Some(item);
        let result = match (&mut slot as &mut dyn Any).downcast_mut::<Option<Vec<u8>>>() {
            // A `Vec<u8>` goes in as raw bytes, not element by element.
            Some(bytes) => self.put_raw(bytes, wait),
            None => match &slot {
                Some(item) => with_encoded(item, |frame| {
                    let record = Record {
                        payload: frame.payload(),
                        fds: frame.fds(),
                        raw: false,
                    };
                    if self.inner.capacity() == 0 {
                        // Unbounded: never waits (memory is the limit, as in Python).
                        backlog::put(&self.inner, record)
                    } else {
                        self.inner.put_record(record, wait, false)
                    }
                }),
                None => Ok(()),
            },
        };
        match (result, slot) {
            (Ok(()), _) => Ok(()),
            (Err(PutFail::Full), Some(item)) => Err(SendTimeoutError::Timeout(item)),
            (Err(PutFail::Closed), Some(item)) => Err(SendTimeoutError::Disconnected(item)),
            // An item that cannot be encoded or stored cannot be put.
            (Err(PutFail::Failed(e)), Some(item)) => Err(SendTimeoutError::Failed(item, e)),
            // Only `put_raw` takes the item, and only when it succeeds.
            (Err(_), None) => Ok(()),
        }
    }

    /// Puts a `Vec<u8>` item, in `slot`, as its raw bytes. One that must
    /// wait in an unbounded queue's backlog goes there as it is, not
    /// copied: it is taken from `slot` then, and only then.
    fn put_raw(&self, slot: &mut Option<Vec<u8>>, wait: Deadline) -> Result<(), PutFail> {
        let Some(bytes) = slot.as_deref() else {
            return Ok(());
        };
        let record = Record {
            payload: bytes,
            fds: &[],
            raw: true,
        };
        if self.inner.capacity() != 0 {
            return self.inner.put_record(record, wait, false);
        }
        match backlog::put_now(&self.inner, record) {
            Err(PutFail::Full) => {}
            done => return done,
        }
        let Some(bytes) = slot.take() else {
            return Ok(());
        };
        backlog::keep(&self.inner, bytes, &[], true).map_err(|(fail, bytes)| {
            *slot = Some(bytes);
            fail
        })
    }

    fn get_wait(&self, wait: Deadline) -> Result<T, RecvTimeoutError> {
        if TypeId::of::<T>() == TypeId::of::<Vec<u8>>() {
            // Into a vector of its own, which a raw item becomes as it is.
            let mut bytes = Vec::new();
            let taken = self.inner.get_record(wait, &mut bytes)?;
            return item_from(bytes, taken).map_err(RecvTimeoutError::Failed);
        }
        let mut bytes = DECODER.take();
        let result = self.inner.get_record(wait, &mut bytes).and_then(|taken| {
            if taken.raw {
                return Err(RecvTimeoutError::Failed(raw_mismatch()));
            }
            wire::decode(&bytes, taken.fds).map_err(RecvTimeoutError::Failed)
        });
        if bytes.capacity() <= SPILL_OVER {
            DECODER.set(bytes);
        }
        result
    }
}

impl<T: Serialize + DeserializeOwned> Queue<T> {
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

    /// Shuts the queue down for every handle in every process (Python
    /// 3.13's `Queue.shutdown`): later puts fail with `Disconnected(item)`,
    /// gets take what is left and then report `Disconnected`. Waiters are
    /// woken.
    pub fn shutdown(&self) {
        self.inner.close();
    }

    /// Whether [`shutdown`](Self::shutdown) was called, by any handle.
    pub fn is_shutdown(&self) -> bool {
        self.inner.is_closed()
    }

    /// Says that this handle will put no more (Python's `Queue.close`): its
    /// later puts fail with `Disconnected(item)`. Other handles, clones of
    /// this one included, and other processes are unaffected, and gets on
    /// this handle go on; to end the queue for everyone, use
    /// [`shutdown`](Self::shutdown).
    ///
    /// ```
    /// # fn main() -> multiproc::Result<()> {
    /// let q = multiproc::Queue::new()?;
    /// let other = q.clone();
    /// q.close();
    /// assert!(q.put(1).is_err());
    /// other.put(2).unwrap();
    /// assert_eq!(q.get()?, 2);
    /// # Ok(())
    /// # }
    /// ```
    pub fn close(&self) {
        self.closed.store(true, Relaxed);
    }

    /// Whether this handle can no longer put: it was closed, or the queue
    /// was shut down.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Relaxed) || self.inner.is_closed()
    }
}

thread_local! {
    /// Each thread encodes into its own reused buffer.
    static ENCODER: std::cell::Cell<Option<OutFrame>> = const { std::cell::Cell::new(None) };
    /// Each thread copies items out of the ring into its own reused buffer
    /// (given up after a large item).
    static DECODER: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The item a `Vec<u8>` queue took: its raw bytes as they are, or
/// (put through a handle of another item type) decoded.
fn item_from<T: DeserializeOwned + 'static>(bytes: Vec<u8>, taken: Taken) -> Result<T, Error> {
    if !taken.raw {
        return wire::decode(&bytes, taken.fds);
    }
    if !taken.fds.is_empty() {
        return Err(corrupt("a raw bytes item came with handles"));
    }
    let boxed: Box<dyn Any> = Box::new(bytes);
    boxed
        .downcast::<T>()
        .map(|item| *item)
        .map_err(|_| raw_mismatch())
}

/// A raw bytes item taken where the queue's item type is not `Vec<u8>`:
/// some handle of this queue was sent as a queue of another item type.
fn raw_mismatch() -> Error {
    Error::new(
        ErrorKind::Decode,
        "took a raw bytes item (a Vec<u8>) from a queue whose item type is not Vec<u8>",
    )
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
        Err(e) => Err(PutFail::Failed(e)),
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
        .ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidInput,
                "capacity must be between 1 and 2^32-1",
            )
        })
}

enum PutFail {
    Full,
    Closed,
    /// The item could not be encoded, or stored (an OS error); it is handed
    /// back with this error as `Failed(item, error)`.
    Failed(Error),
}

fn corrupt(what: &str) -> Error {
    Error::new(ErrorKind::Decode, format!("queue is corrupt: {what}"))
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::SeqCst;

    use super::*;
    use crate::sys::ring::Pos;

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

    #[test]
    fn raw_byte_items_are_handed_over_only_as_vec_u8() {
        let raw = |bytes| Record {
            payload: bytes,
            fds: &[],
            raw: true,
        };
        // A `Vec<u8>` item taken as another type (through a handle sent as a
        // queue of that type): a typed error, not a reinterpretation (a
        // `String`'s encoding is a length and bytes, which these could pass for).
        let q = Queue::<String>::new().unwrap();
        q.inner
            .put_record(raw(b"\x03abc"), Deadline::Now, false)
            .ok()
            .unwrap();
        assert_eq!(
            q.try_get().unwrap_err().to_string(),
            TryRecvError::Failed(raw_mismatch()).to_string()
        );
        // An encoded item on a `Vec<u8>` queue (put through a handle of
        // another type) is decoded.
        let q = Queue::<Vec<u8>>::new().unwrap();
        let mut frame = OutFrame::new();
        frame.encode(&"abc".to_string()).unwrap();
        let encoded = Record {
            payload: frame.payload(),
            fds: &[],
            raw: false,
        };
        q.inner
            .put_record(encoded, Deadline::Now, false)
            .ok()
            .unwrap();
        assert_eq!(q.try_get().unwrap(), b"abc");
        // A raw item with a handle (only a broken or hostile putter sends
        // one): an error, and the handle is closed.
        let fds = [memfd_of(1)];
        let with_fd = Record {
            payload: b"abc",
            fds: &fds,
            raw: true,
        };
        q.inner
            .put_record(with_fd, Deadline::Now, false)
            .ok()
            .unwrap();
        assert!(matches!(q.try_get(), Err(TryRecvError::Failed(_))));
        assert_eq!(q.try_get(), Err(TryRecvError::Empty));
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
