//! [`Queue`] and [`JoinableQueue`]: multi-producer, multi-consumer queues
//! shared by any number of processes (Python's `multiprocessing.Queue`).
//!
//! Items are encoded by the putting process and copied into a ring buffer in
//! shared memory (a memfd, see [`crate::sys::shm`]), under the region's
//! process-shared lock; sleeping getters and putters wait on futex words
//! beside it. An item that carries handles (descriptors), or that is too
//! large for the ring, also sends a message on a datagram socket pair owned
//! by the queue: the descriptors (and, for a large item, a memfd holding its
//! bytes) travel there, tagged with the item's sequence number.
//!
//! The ring's state is two words, `tail` (where the next item goes, and how
//! many were ever put) and `head` (where the next item is read, and how many
//! were ever taken), each changed by a single store at the very end of a put
//! or a get. A process killed at any point of a put or get therefore leaves
//! the ring consistent, and the lock it held is taken over by the next
//! process (see `sync::raw`).

use std::fmt;
use std::io::{self, IoSlice, IoSliceMut};
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release, SeqCst};
use std::sync::atomic::{AtomicU32, AtomicU64};
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
use crate::sync::raw::{DataGuard, Spin};
use crate::sync::{Kind, Wait};
use crate::sys::futex;
use crate::sys::shm::{self, SharedRegion};
use crate::wire::{self, OutFrame};

const KIND: Kind = Kind::new(b"mpQU", "multiproc::Queue");

// Words of the region (after the standard magic, lock word and owner tag).
/// Most items the queue holds (0: no limit but the ring's size).
const CAPACITY: usize = 24;
/// Non-zero once `close` was called.
const CLOSED: usize = 28;
/// Low 32 bits: byte offset of the next record; high 32: items ever put.
const TAIL: usize = 40;
/// Low 32 bits: byte offset of the next record to read; high 32: items ever taken.
const HEAD: usize = 48;
/// Bumped when an item arrives (or the queue closes), for sleeping getters.
const NOT_EMPTY: usize = 56;
const EMPTY_WAITERS: usize = 60;
/// Bumped when an item leaves (or the queue closes), for sleeping putters.
const NOT_FULL: usize = 64;
const FULL_WAITERS: usize = 68;
/// Items put but not yet marked done (`JoinableQueue`).
const UNFINISHED: usize = 72;
/// Bumped when `UNFINISHED` reaches zero.
const ALL_DONE: usize = 76;
/// Size of the ring in bytes.
const RING_LEN: usize = 80;
const ATOMICS_LEN: usize = 128;

/// The ring's default size: address space only, until items fill it.
const DEFAULT_RING: usize = 16 << 20;
/// Items whose encoding is larger than this go through a memfd.
const SPILL_OVER: usize = 1 << 20;

const RECORD_HEADER: usize = 8;
/// Record flags.
const PAD: u32 = 1;
const SIDE: u32 = 2;
const SPILLED: u32 = 4;

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
///   the others. What can be lost: the item that process was putting (it is
///   either in the queue whole or not at all) and the item it was taking
///   (taken whole or left in the queue, except that an item carrying handles
///   or too large for the ring, caught between the two steps of its get, is
///   dropped). Nothing is ever delivered twice.
/// - An item whose `Serialize` fails is handed back as `Disconnected(item)`.
/// - Waiters on a queue no one will put to again wait until their timeout
///   or for ever, as in Python; `close` wakes them.
pub struct Queue<T> {
    inner: Arc<Inner>,
    _item: PhantomData<fn(T) -> T>,
}

struct Inner {
    region: SharedRegion,
    /// Putters send side messages here; getters receive them on `side_rx`.
    side_tx: OwnedFd,
    side_rx: OwnedFd,
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
        Queue::create(0)
    }

    /// A queue that holds at most `capacity` items: `put` waits while it is full.
    pub fn bounded(capacity: usize) -> Result<Queue<T>, Error> {
        let capacity = u32::try_from(capacity)
            .ok()
            .filter(|&c| c > 0)
            .ok_or_else(|| Error::new(ErrorKind::Io, "capacity must be between 1 and 2^32-1"))?;
        Queue::create(capacity)
    }

    fn create(capacity: u32) -> Result<Queue<T>, Error> {
        let region = crate::sync::create(KIND, ATOMICS_LEN, DEFAULT_RING, |r| {
            r.atomic_u32(CAPACITY).store(capacity, Relaxed);
            r.atomic_u32(RING_LEN).store(DEFAULT_RING as u32, Relaxed);
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
        Ok(Queue {
            inner: Arc::new(Inner {
                region,
                side_tx,
                side_rx,
            }),
            _item: PhantomData,
        })
    }

    /// Puts an item, waiting while the queue is full.
    pub fn put(&self, item: T) -> Result<(), SendError<T>> {
        self.put_wait(item, Wait::Forever).map_err(|e| match e {
            SendTimeoutError::Timeout(item) | SendTimeoutError::Disconnected(item) => {
                SendError(item)
            }
        })
    }

    /// Puts an item, waiting at most `timeout` for room.
    pub fn put_timeout(&self, item: T, timeout: Duration) -> Result<(), SendTimeoutError<T>> {
        self.put_wait(item, Wait::timeout(timeout))
    }

    /// Puts an item if there is room now.
    pub fn try_put(&self, item: T) -> Result<(), TrySendError<T>> {
        self.put_wait(item, Wait::Try).map_err(|e| match e {
            SendTimeoutError::Timeout(item) => TrySendError::Full(item),
            SendTimeoutError::Disconnected(item) => TrySendError::Disconnected(item),
        })
    }

    /// Takes the oldest item, waiting until there is one. `Disconnected`
    /// once the queue is closed and drained.
    pub fn get(&self) -> Result<T, RecvError> {
        self.get_wait(Wait::Forever).map_err(|e| match e {
            RecvTimeoutError::Disconnected | RecvTimeoutError::Timeout => RecvError::Disconnected,
            RecvTimeoutError::Failed(e) => RecvError::Failed(e),
        })
    }

    /// Takes the oldest item, waiting at most `timeout`.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.get_wait(Wait::timeout(timeout))
    }

    /// Takes the oldest item if there is one now.
    pub fn try_get(&self) -> Result<T, TryRecvError> {
        self.get_wait(Wait::Try).map_err(|e| match e {
            RecvTimeoutError::Timeout => TryRecvError::Empty,
            RecvTimeoutError::Disconnected => TryRecvError::Disconnected,
            RecvTimeoutError::Failed(e) => TryRecvError::Failed(e),
        })
    }

    fn put_wait(&self, item: T, wait: Wait) -> Result<(), SendTimeoutError<T>> {
        let encoded = ENCODER.with(|enc| {
            let mut frame = enc.take();
            frame.clear();
            let result = frame.encode(&item);
            (frame, result)
        });
        let (frame, encoded) = encoded;
        let result = match encoded {
            Ok(()) => self
                .inner
                .put_bytes(frame.payload(), frame.fds(), wait, false),
            Err(_) => Err(PutFail::Failed),
        };
        ENCODER.with(|enc| enc.set(frame));
        match result {
            Ok(()) => Ok(()),
            Err(PutFail::Full) => Err(SendTimeoutError::Timeout(item)),
            Err(PutFail::Closed) => Err(SendTimeoutError::Disconnected(item)),
            // An item that cannot be encoded or stored cannot be put.
            Err(PutFail::Failed) => Err(SendTimeoutError::Disconnected(item)),
        }
    }

    fn get_wait(&self, wait: Wait) -> Result<T, RecvTimeoutError> {
        let (bytes, fds) = self.inner.get_bytes(wait)?;
        wire::decode(&bytes, fds).map_err(RecvTimeoutError::Failed)
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
    static ENCODER: std::cell::Cell<OutFrame> = std::cell::Cell::new(OutFrame::new());
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
        self.region.atomic_u32(offset)
    }

    fn word64(&self, offset: usize) -> &AtomicU64 {
        self.region.atomic_u64(offset)
    }

    fn capacity(&self) -> usize {
        self.word(CAPACITY).load(Relaxed) as usize
    }

    fn is_closed(&self) -> bool {
        self.word(CLOSED).load(Acquire) != 0
    }

    fn ring_len(&self) -> usize {
        // Fixed at creation; bounded by the region's size in case a peer lies.
        (self.word(RING_LEN).load(Relaxed) as usize).min(self.region.data_len()) & !7
    }

    fn len(&self) -> usize {
        let puts = (self.word64(TAIL).load(Acquire) >> 32) as u32;
        let gets = (self.word64(HEAD).load(Acquire) >> 32) as u32;
        puts.wrapping_sub(gets) as usize
    }

    /// Locks the ring. A process that died holding the lock left the ring
    /// consistent (see the module docs), so its death is not an error here.
    fn lock(&self, wait: Wait) -> Option<DataGuard<'_>> {
        loop {
            match DataGuard::lock(&self.region, wait, "queue lock") {
                Ok(guard) => return guard,
                Err(_) => continue,
            }
        }
    }

    fn close(&self) {
        if let Some(guard) = self.lock(Wait::Forever) {
            self.word(CLOSED).store(1, Release);
            drop(guard);
        }
        for word in [NOT_EMPTY, NOT_FULL] {
            self.word(word).fetch_add(1, SeqCst);
            futex::wake_all(self.word(word));
        }
    }

    fn put_bytes(
        &self,
        payload: &[u8],
        fds: &[OwnedFd],
        wait: Wait,
        joinable: bool,
    ) -> Result<(), PutFail> {
        let ring = self.ring_len();
        let spilled = payload.len() > SPILL_OVER.min(ring / 4);
        let spill = if spilled {
            Some(spill_to_memfd(payload).map_err(|_| PutFail::Failed)?)
        } else {
            None
        };
        let inline = if spilled { 0 } else { payload.len() };
        let need = RECORD_HEADER + align8(inline);
        let capacity = self.capacity() as u32;
        loop {
            let Some(mut guard) = self.lock(wait) else {
                return Err(PutFail::Full);
            };
            if self.is_closed() {
                return Err(PutFail::Closed);
            }
            let tail = self.word64(TAIL).load(Relaxed);
            let head = self.word64(HEAD).load(Relaxed);
            let puts = (tail >> 32) as u32;
            let gets = (head >> 32) as u32;
            let count = puts.wrapping_sub(gets);
            let (mut t, h) = if count == 0 {
                (0, 0)
            } else {
                ((tail as u32) as usize, (head as u32) as usize)
            };
            let room = capacity == 0 || count < capacity;
            let at = if !room {
                None
            } else if count == 0 || t > h {
                if need <= ring - t {
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
            };
            let side_sent = match at {
                Some(_) if spill.is_some() || !fds.is_empty() => {
                    send_side(self.side_tx.as_fd(), puts, spill.as_ref(), fds)
                }
                _ => Ok(true),
            };
            let side_sent = side_sent.map_err(|_| PutFail::Failed)?;
            if let (Some(at), true) = (at, side_sent) {
                let data = shm::data_mut(&mut guard);
                if count == 0 {
                    self.word64(HEAD).store(u64::from(gets) << 32, Relaxed);
                }
                if at == 0 && t != 0 {
                    data[t..t + RECORD_HEADER].copy_from_slice(&record_header(0, PAD));
                }
                let mut flags = 0;
                if spill.is_some() || !fds.is_empty() {
                    flags |= SIDE;
                }
                if spill.is_some() {
                    flags |= SPILLED;
                }
                let len = payload.len() as u32;
                data[at..at + RECORD_HEADER].copy_from_slice(&record_header(len, flags));
                data[at + RECORD_HEADER..at + RECORD_HEADER + inline]
                    .copy_from_slice(&payload[..inline]);
                t = at + need;
                if t == ring {
                    t = 0;
                }
                if joinable {
                    self.word(UNFINISHED).fetch_add(1, Relaxed);
                }
                // Publishing is this one store.
                self.word64(TAIL)
                    .store(u64::from(puts.wrapping_add(1)) << 32 | t as u64, Release);
                drop(guard);
                if self.word(EMPTY_WAITERS).load(SeqCst) > 0 {
                    self.word(NOT_EMPTY).fetch_add(1, SeqCst);
                    futex::wake(self.word(NOT_EMPTY), 1);
                }
                return Ok(());
            }
            // Full: sleep until a get makes room (or the deadline).
            if matches!(wait, Wait::Try) {
                return Err(PutFail::Full);
            }
            self.word(FULL_WAITERS).fetch_add(1, SeqCst);
            let seq = self.word(NOT_FULL).load(SeqCst);
            drop(guard);
            let left = wait.left();
            let timed_out = left == Some(Duration::ZERO)
                || matches!(
                    futex::wait(self.word(NOT_FULL), seq, left),
                    futex::Wait::TimedOut
                );
            self.word(FULL_WAITERS).fetch_sub(1, SeqCst);
            if timed_out && wait.left() == Some(Duration::ZERO) {
                return Err(PutFail::Full);
            }
        }
    }

    fn get_bytes(&self, wait: Wait) -> Result<(Vec<u8>, Vec<OwnedFd>), RecvTimeoutError> {
        let mut spin = Spin::new();
        loop {
            let Some(mut guard) = self.lock(wait) else {
                return Err(RecvTimeoutError::Timeout);
            };
            let tail = self.word64(TAIL).load(Acquire);
            let head = self.word64(HEAD).load(Relaxed);
            let puts = (tail >> 32) as u32;
            let gets = (head >> 32) as u32;
            if puts != gets {
                let result = self.take_record(&mut guard, head, gets);
                drop(guard);
                if self.word(FULL_WAITERS).load(SeqCst) > 0 {
                    self.word(NOT_FULL).fetch_add(1, SeqCst);
                    futex::wake(self.word(NOT_FULL), 1);
                }
                return result.map_err(RecvTimeoutError::Failed);
            }
            if self.is_closed() {
                return Err(RecvTimeoutError::Disconnected);
            }
            if matches!(wait, Wait::Try) {
                return Err(RecvTimeoutError::Timeout);
            }
            drop(guard);
            // Empty: look again for a few microseconds before sleeping.
            let mut arrived = false;
            while spin.spin() {
                if (self.word64(TAIL).load(Relaxed) >> 32) as u32 != gets || self.is_closed() {
                    arrived = true;
                    break;
                }
            }
            if arrived {
                continue;
            }
            self.word(EMPTY_WAITERS).fetch_add(1, SeqCst);
            let seq = self.word(NOT_EMPTY).load(SeqCst);
            let still_empty =
                (self.word64(TAIL).load(SeqCst) >> 32) as u32 == gets && !self.is_closed();
            let timed_out = still_empty && {
                let left = wait.left();
                left == Some(Duration::ZERO)
                    || matches!(
                        futex::wait(self.word(NOT_EMPTY), seq, left),
                        futex::Wait::TimedOut
                    )
            };
            self.word(EMPTY_WAITERS).fetch_sub(1, SeqCst);
            if timed_out && wait.left() == Some(Duration::ZERO) {
                return Err(RecvTimeoutError::Timeout);
            }
        }
    }

    /// Reads the record at `head` and advances past it (under the lock).
    fn take_record(
        &self,
        guard: &mut DataGuard<'_>,
        head: u64,
        gets: u32,
    ) -> Result<(Vec<u8>, Vec<OwnedFd>), Error> {
        let ring = self.ring_len();
        let data = shm::data(guard);
        let mut h = (head as u32) as usize;
        let read_header = |at: usize| -> Result<(usize, u32), Error> {
            let bytes = data
                .get(at..at + RECORD_HEADER)
                .ok_or_else(|| corrupt("record outside the ring"))?;
            let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
            let flags = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
            Ok((len, flags))
        };
        let (mut len, mut flags) = read_header(h)?;
        if flags & PAD != 0 {
            h = 0;
            (len, flags) = read_header(h)?;
        }
        let inline = if flags & SPILLED != 0 { 0 } else { len };
        let end = h + RECORD_HEADER + align8(inline);
        let bytes = data
            .get(h + RECORD_HEADER..h + RECORD_HEADER + inline)
            .filter(|_| end <= ring)
            .ok_or_else(|| corrupt("record longer than the ring"))?
            .to_vec();
        let side = if flags & SIDE != 0 {
            recv_side(self.side_rx.as_fd(), gets)
        } else {
            Ok(Vec::new())
        };
        let next = if end == ring { 0 } else { end };
        // Taking is this one store: the item is gone from the queue even if
        // its side message could not be had.
        self.word64(HEAD)
            .store(u64::from(gets.wrapping_add(1)) << 32 | next as u64, Release);
        let mut fds = side.map_err(|e| Error::io("receiving an item's handles", e))?;
        if flags & SPILLED == 0 {
            return Ok((bytes, fds));
        }
        if fds.is_empty() {
            return Err(corrupt("a large item's memfd is missing"));
        }
        let memfd = fds.remove(0);
        let bytes = read_spill(&memfd, len).map_err(|e| Error::io("reading a large item", e))?;
        Ok((bytes, fds))
    }
}

fn record_header(len: u32, flags: u32) -> [u8; RECORD_HEADER] {
    let mut h = [0u8; RECORD_HEADER];
    h[..4].copy_from_slice(&len.to_le_bytes());
    h[4..].copy_from_slice(&flags.to_le_bytes());
    h
}

fn spill_to_memfd(payload: &[u8]) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create("multiproc-queue-item", rustix::fs::MemfdFlags::CLOEXEC)?;
    let mut written = 0;
    while written < payload.len() {
        match rustix::io::write(&fd, &payload[written..]) {
            Ok(n) => written += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(fd)
}

fn read_spill(fd: &OwnedFd, len: usize) -> io::Result<Vec<u8>> {
    let size = rustix::fs::fstat(fd)?.st_size;
    if u64::try_from(size).ok() != Some(len as u64) {
        return Err(io::Error::other("a large item's memfd has the wrong size"));
    }
    let mut bytes = vec![0u8; len];
    let mut done = 0;
    while done < len {
        match rustix::io::pread(fd, &mut bytes[done..], done as u64) {
            Ok(0) => return Err(io::Error::other("a large item's memfd is short")),
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(bytes)
}

/// Sends the side message of item `seq`. `Ok(false)`: the socket is full.
fn send_side(
    sock: BorrowedFd<'_>,
    seq: u32,
    spill: Option<&OwnedFd>,
    fds: &[OwnedFd],
) -> io::Result<bool> {
    let all: Vec<BorrowedFd<'_>> = spill.into_iter().chain(fds).map(|fd| fd.as_fd()).collect();
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(all.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&all)) {
        return Err(io::Error::other("too many handles in one item"));
    }
    let tag = seq.to_le_bytes();
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

/// Receives the side message of item `seq`, dropping older ones left by
/// processes that died between sending one and publishing its item.
fn recv_side(sock: BorrowedFd<'_>, seq: u32) -> io::Result<Vec<OwnedFd>> {
    loop {
        let mut tag = [0u8; 4];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(wire::MAX_FDS + 1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let msg = match rustix::net::recvmsg(
            sock,
            &mut [IoSliceMut::new(&mut tag)],
            &mut control,
            RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(msg) => msg,
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => {
                return Err(io::Error::other("the item's handles were lost"));
            }
            Err(e) => return Err(e.into()),
        };
        let mut fds = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        let got = u32::from_le_bytes(tag);
        if msg.bytes == 4 && got == seq {
            return Ok(fds);
        }
        // `got` is older than `seq` (or garbage): drop it, and its descriptors.
        if (got.wrapping_sub(seq) as i32) > 0 {
            return Err(io::Error::other("the item's handles were lost"));
        }
    }
}

impl<T> Serialize for Queue<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let region = wire::push_fd(self.inner.region.as_fd()).map_err(S::Error::custom)?;
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
        let region =
            crate::sync::open_region(region, KIND, Some(ATOMICS_LEN)).map_err(D::Error::custom)?;
        Ok(Queue {
            inner: Arc::new(Inner {
                region,
                side_tx,
                side_rx,
            }),
            _item: PhantomData,
        })
    }
}

/// A [`Queue`] that also counts unfinished items, as Python's
/// `JoinableQueue`: every `get` is matched by a [`task_done`](Self::task_done)
/// and [`join`](Self::join) waits until all are.
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

    /// Every `Queue` method, except that puts count as unfinished tasks.
    fn deref(&self) -> &Queue<T> {
        &self.queue
    }
}

impl<T: Serialize + DeserializeOwned> JoinableQueue<T> {
    /// An unbounded joinable queue.
    pub fn new() -> Result<JoinableQueue<T>, Error> {
        Ok(JoinableQueue {
            queue: Queue::new()?,
        })
    }

    /// A joinable queue of at most `capacity` items.
    pub fn bounded(capacity: usize) -> Result<JoinableQueue<T>, Error> {
        Ok(JoinableQueue {
            queue: Queue::bounded(capacity)?,
        })
    }

    /// Puts an item (one more unfinished task), waiting while the queue is full.
    pub fn put(&self, item: T) -> Result<(), SendError<T>> {
        self.put_wait(item, Wait::Forever)
            .map_err(|e| SendError(e.into_inner()))
    }

    /// Puts an item, waiting at most `timeout` for room.
    pub fn put_timeout(&self, item: T, timeout: Duration) -> Result<(), SendTimeoutError<T>> {
        self.put_wait(item, Wait::timeout(timeout))
    }

    /// Puts an item if there is room now.
    pub fn try_put(&self, item: T) -> Result<(), TrySendError<T>> {
        self.put_wait(item, Wait::Try).map_err(|e| match e {
            SendTimeoutError::Timeout(item) => TrySendError::Full(item),
            SendTimeoutError::Disconnected(item) => TrySendError::Disconnected(item),
        })
    }

    fn put_wait(&self, item: T, wait: Wait) -> Result<(), SendTimeoutError<T>> {
        let (frame, encoded) = ENCODER.with(|enc| {
            let mut frame = enc.take();
            frame.clear();
            let result = frame.encode(&item);
            (frame, result)
        });
        let result = match encoded {
            Ok(()) => self
                .queue
                .inner
                .put_bytes(frame.payload(), frame.fds(), wait, true),
            Err(_) => Err(PutFail::Failed),
        };
        ENCODER.with(|enc| enc.set(frame));
        match result {
            Ok(()) => Ok(()),
            Err(PutFail::Full) => Err(SendTimeoutError::Timeout(item)),
            Err(PutFail::Closed) | Err(PutFail::Failed) => {
                Err(SendTimeoutError::Disconnected(item))
            }
        }
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
        self.join_wait(Wait::Forever).map(drop)
    }

    /// Like [`join`](Self::join) for at most `timeout`; `Ok(false)` if tasks
    /// are still unfinished then.
    pub fn join_timeout(&self, timeout: Duration) -> Result<bool, Error> {
        self.join_wait(Wait::timeout(timeout))
    }

    fn join_wait(&self, wait: Wait) -> Result<bool, Error> {
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
