//! [`Pipe`] and [`Connection`]: two connected ends that carry typed messages
//! between processes (Python's `multiprocessing.Pipe`).

use std::any::Any;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::net::Shutdown;
use serde::de::{DeserializeOwned, Error as _};
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::channel_error::{RecvError, RecvTimeoutError, TryRecvError};
use crate::error::{Error, ErrorKind};
use crate::sync::{RegionKind, region_handle};
use crate::sys::lock_word::Deadline;
use crate::sys::lock_word::{Acquisition, RawLock};
use crate::sys::shm::SharedRegion;
use crate::sys::slots::SlotRing;
use crate::wire::{self, FrameError, FrameKind, OutFrame};

mod lane;
mod outgoing;

use lane::LANE_MIN;
pub(crate) use outgoing::Encoded;

/// Creates connected pairs of [`Connection`]s.
///
/// ```
/// use multiproc::{process_entry, spawn, Connection, Pipe};
///
/// #[process_entry]
/// fn child(conn: Connection<(i32, Option<i32>, String)>) {
///     conn.send(&(42, None, "hello".to_string())).unwrap();
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let (parent_conn, child_conn) = Pipe::duplex()?;
/// let p = spawn!(child, child_conn)?;
/// assert_eq!(parent_conn.recv()?, (42, None, "hello".to_string()));
/// p.join()?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Pipe<T>(PhantomData<fn(T) -> T>);

impl<T: Serialize + DeserializeOwned> Pipe<T> {
    /// Two ends that can each send and receive.
    pub fn duplex() -> Result<(Connection<T>, Connection<T>), Error> {
        let (a, b) = socketpair()?;
        let locks = SendLocks::new()?;
        Ok((
            Connection::new(a, End::both(locks.clone(), 0)),
            Connection::new(b, End::both(locks, 1)),
        ))
    }

    /// `(receiver, sender)`: the first end only receives, the second only sends.
    pub fn simplex() -> Result<(Connection<T>, Connection<T>), Error> {
        let (rx, tx) = socketpair()?;
        // Each end refuses the direction it does not have, in every process.
        rustix::net::shutdown(&rx, Shutdown::Write).map_err(|e| Error::io("shutdown", e.into()))?;
        rustix::net::shutdown(&tx, Shutdown::Read).map_err(|e| Error::io("shutdown", e.into()))?;
        let locks = SendLocks::new()?;
        Ok((
            Connection::new(
                rx,
                End {
                    locks: locks.clone(),
                    side: 1,
                    readable: true,
                    writable: false,
                },
            ),
            Connection::new(
                tx,
                End {
                    locks,
                    side: 0,
                    readable: false,
                    writable: true,
                },
            ),
        ))
    }
}

fn socketpair() -> Result<(OwnedFd, OwnedFd), Error> {
    let (a, b) = crate::sys::stream_pair().map_err(|e| Error::io("creating a socket pair", e))?;
    // A larger send buffer (as far as `net.core.wmem_max` allows; it only
    // holds bytes in flight) lets a large message cross in a few chunks
    // rather than dozens, each a wake-up of the reader.
    for end in [&a, &b] {
        let _ = rustix::net::sockopt::set_socket_send_buffer_size(end, SEND_BUFFER);
    }
    Ok((a, b))
}

/// The send locks of a pipe's two sides, in one shared region. Every send
/// on a side holds its lock, in whichever process sends; a receiver whose
/// message stops arriving half-way looks at the other side's lock, which a
/// sender killed in the middle of that message still holds.
struct SendLocks {
    region: Arc<SharedRegion>,
}

region_handle!(SendLocks, LOCKS_KIND, Some(crate::sync::WORDS_ONLY_LEN));

const LOCKS_KIND: RegionKind = RegionKind::new(b"mpPL", "multiproc::Pipe");

impl SendLocks {
    fn new() -> Result<SendLocks, Error> {
        let region = crate::sync::create(LOCKS_KIND, crate::sync::WORDS_ONLY_LEN, 0, |_| {})?;
        Ok(SendLocks { region })
    }

    /// The send lock of side `side` (0 or 1): its word, then its owner tag.
    fn of(&self, side: u8) -> RawLock<'_> {
        let at = 8 + 16 * usize::from(side & 1);
        RawLock::at(&self.region, at, at + 8)
    }
}

/// Which end of which pipe a handle is, and what it may do there.
#[derive(Clone, Serialize, Deserialize)]
struct End {
    locks: SendLocks,
    /// 0 or 1; the other side's messages are the ones this end receives.
    side: u8,
    readable: bool,
    writable: bool,
}

impl End {
    /// An end of a duplex pipe.
    fn both(locks: SendLocks, side: u8) -> End {
        End {
            locks,
            side,
            readable: true,
            writable: true,
        }
    }
}

/// Holds a side's send lock; releases it when dropped.
struct SendLockGuard<'a>(RawLock<'a>);

impl Drop for SendLockGuard<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// A receive without a deadline never times out; should a timeout come
/// anyway, it is reported as a failure rather than mistaken for a message.
fn without_deadline(e: RecvTimeoutError) -> RecvError {
    match e {
        RecvTimeoutError::Disconnected => RecvError::Disconnected,
        RecvTimeoutError::Failed(e) => RecvError::Failed(e),
        RecvTimeoutError::Timeout => RecvError::Failed(Error::new(
            ErrorKind::Timeout,
            "a receive without a deadline timed out",
        )),
    }
}

/// What each end asks for as its send buffer.
const SEND_BUFFER: usize = 2 << 20;

/// One end of a [`Pipe`]: sends and receives messages of type `T`.
///
/// Messages arrive whole and in order, whatever their size. Threads and
/// processes may share an end for sending (`Connection` is `Sync`, and a
/// copy sent to another process is the same end): every send holds a
/// process-shared lock of that end, so two messages never interleave.
/// Receiving is for one process at a time, as in Python: threads of that
/// process (and its `try_clone`s) take turns (a `recv_timeout` or
/// `try_recv` waits for its turn no longer than its deadline), but two
/// processes receiving on copies of one end would split the stream between
/// them.
///
/// # Caveats
/// - When every handle to the other end is gone — dropped, closed, or its
///   process died — `recv` returns `Disconnected` and `send` fails with
///   [`ErrorKind::Disconnected`]; nothing hangs. Keep no spare copy of the
///   other end in this process, or it never looks gone (as with Python).
/// - A process killed in the middle of a send leaves half a message in the
///   stream: the receiver gets an error and the connection is broken. The
///   error is `Disconnected` ("died in the middle of a message") within
///   about 50 ms, even while other processes still hold the sending end
///   (the receiver sees the dead process holding that end's send lock), or
///   `Decode` if the stream ended in the middle of a frame.
/// - A receiving process killed in the middle of a large message (or
///   after a deadline passed half-way through one) makes a `send` still
///   waiting for it fail with `Disconnected` instead of waiting for ever,
///   and closes the stream (the message can no longer be delivered whole),
///   so any other holder of the receiving end then sees `Disconnected` too.
///   Only a receiver killed in the instant between taking such a message's
///   announcement and starting on its bytes, or one that closes its end
///   half-way through such a message (after a deadline passed) and lives
///   on, goes unseen while another process holds the receiving end: the
///   sender then waits until every copy of that end is closed.
/// - A deadline (`recv_timeout`, `try_recv`) covers the whole message. A
///   message still arriving when it passes is reported as `Timeout` and
///   is not lost: what came of it is kept, and the next receive goes on
///   with it. (`poll` and [`crate::wait()`] count such a message as ready.)
/// - Messages of 256 KiB or more do not go through the socket but through a
///   *lane*: a 4 MiB ring in shared memory that the sender fills while the
///   receiver drains it, which doubles or triples their throughput. Each
///   process that sends such a message on an end keeps one lane for it
///   (up to 4 MiB of memory) while it holds the end.
/// - A send waits while the other side is not receiving and its buffer
///   (about 4 MiB, socket or lane) is full; sending more than that before
///   anyone receives, from the thread that would receive it, never returns
///   (as with Python, whose buffer is far smaller).
/// - A `Connection` travels to another process as an entry argument or in a
///   message; the copy sent and the copy kept are the same end.
pub struct Connection<T> {
    fd: OwnedFd,
    end: End,
    /// Shared by the handles `try_clone` makes.
    send_state: Arc<Mutex<SendState>>,
    /// Shared by the handles `try_clone` makes, which read one stream.
    recv_state: Arc<Mutex<RecvState>>,
    /// Whose turn it is to receive, shared as `recv_state` is: a receive
    /// holds it throughout, and one with a deadline waits for it no longer.
    recv_turn: Arc<RecvTurn>,
    _message: PhantomData<fn(T) -> T>,
}

#[derive(Debug)]
struct SendState {
    frame: OutFrame,
    /// Made at the first large message this process sends on the end.
    lane: Option<SlotRing>,
}

#[derive(Debug, Default)]
struct RecvState {
    reader: wire::FrameReader,
    buf: Vec<u8>,
    /// The lane of the last large message, kept mapped for the next one.
    lane: Option<SlotRing>,
    /// Set when the byte stream can no longer be split into frames.
    broken: Option<String>,
    /// A large message whose deadline passed half-way through the lane: the
    /// rest is read by the next receive, into `buf`.
    lane_pending: Option<lane::LanePending>,
}

impl Drop for RecvState {
    fn drop(&mut self) {
        // A large message left half-read: the lane's writer stops watching
        // this process, which goes on living without it.
        if self.lane_pending.is_some()
            && let Some(lane) = &self.lane
        {
            lane.stop_reading();
        }
    }
}

impl RecvState {
    /// The payload of the frame just received: still in the read-ahead
    /// buffer (at `at`), or in `buf`.
    fn payload(&self, at: Option<Range<usize>>) -> &[u8] {
        match at {
            Some(at) => self.reader.bytes(at),
            None => &self.buf,
        }
    }

    /// The payload of the frame just received, as a vector of its own.
    fn take_payload(&mut self, at: Option<Range<usize>>) -> Vec<u8> {
        match at {
            Some(at) => self.reader.bytes(at).to_vec(),
            None => std::mem::take(&mut self.buf),
        }
    }
}

impl<T> fmt::Debug for Connection<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("fd", &self.fd)
            .field("readable", &self.end.readable)
            .field("writable", &self.end.writable)
            .finish_non_exhaustive()
    }
}

fn lock<S>(m: &Mutex<S>) -> MutexGuard<'_, S> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One receiving thread at a time, as a lock that, unlike a `Mutex`, can
/// be waited for with a deadline: a `recv_timeout` or `try_recv` while
/// another thread is in `recv` gives up on time instead of waiting for
/// that receive to end.
#[derive(Debug, Default)]
struct RecvTurn {
    state: Mutex<Turn>,
    freed: Condvar,
}

/// Whether a thread has the turn, and how many wait for it (so that
/// handing it on costs a wake-up only when someone waits).
#[derive(Debug, Default)]
struct Turn {
    busy: bool,
    waiting: usize,
}

impl RecvTurn {
    /// Takes the turn, waiting until `deadline` (`None`: for as long as it
    /// takes); `None` if another thread still has it then.
    fn take(&self, deadline: Option<Instant>) -> Option<TurnGuard<'_>> {
        let mut turn = lock(&self.state);
        while turn.busy {
            let left = match deadline {
                None => None,
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    Some(left)
                }
            };
            turn.waiting += 1;
            turn = match left {
                None => self.freed.wait(turn).unwrap_or_else(|p| p.into_inner()),
                Some(left) => {
                    self.freed
                        .wait_timeout(turn, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
            turn.waiting -= 1;
        }
        turn.busy = true;
        Some(TurnGuard(self))
    }
}

/// Holds the turn to receive; hands it on when dropped.
struct TurnGuard<'a>(&'a RecvTurn);

impl Drop for TurnGuard<'_> {
    fn drop(&mut self) {
        let mut turn = lock(&self.0.state);
        turn.busy = false;
        if turn.waiting > 0 {
            self.0.freed.notify_one();
        }
    }
}

impl<T> Connection<T> {
    fn new(fd: OwnedFd, end: End) -> Connection<T> {
        Connection {
            fd,
            end,
            send_state: Arc::new(Mutex::new(SendState {
                frame: OutFrame::new(),
                lane: None,
            })),
            recv_state: Arc::new(Mutex::new(RecvState::default())),
            recv_turn: Arc::new(RecvTurn::default()),
            _message: PhantomData,
        }
    }

    /// Another handle to this same end (its descriptor duplicated), for
    /// example to hand one end to several processes.
    pub fn try_clone(&self) -> Result<Connection<T>, Error> {
        let fd = self
            .fd
            .try_clone()
            .map_err(|e| Error::io("duplicating a connection", e))?;
        let mut clone = Connection::new(fd, self.end.clone());
        clone.send_state = Arc::clone(&self.send_state);
        clone.recv_state = Arc::clone(&self.recv_state);
        clone.recv_turn = Arc::clone(&self.recv_turn);
        Ok(clone)
    }

    /// Whether this end can receive.
    pub fn readable(&self) -> bool {
        self.end.readable
    }

    /// Whether this end can send.
    pub fn writable(&self) -> bool {
        self.end.writable
    }

    /// Closes this end (in this process; copies elsewhere stay open).
    pub fn close(self) {
        drop(self);
    }

    /// Whether a message (or the end of the stream) is ready to receive,
    /// waiting up to `timeout`.
    ///
    /// On a send-only end (of [`Pipe::simplex`]) it is `true` at once:
    /// [`recv`](Connection::recv) there fails at once, with
    /// [`ErrorKind::InvalidInput`] saying the end is send-only, rather than
    /// a loop that polls it waiting for ever (Python's `poll` raises
    /// there).
    pub fn poll(&self, timeout: Duration) -> bool {
        // Data read ahead is ready too. (If another thread is receiving, it
        // holds the state: then only the socket is looked at.)
        if let Ok(state) = self.recv_state.try_lock()
            && (state.reader.has_buffered() || state.lane_pending.is_some())
        {
            return true;
        }
        self.poll_socket(Some(timeout))
    }

    /// For [`crate::wait()`]: ready now (a message read ahead, or a broken
    /// stream that `recv` reports at once), or the socket to poll.
    pub(crate) fn readiness(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        if let Ok(state) = self.recv_state.try_lock()
            && (state.reader.has_buffered()
                || state.lane_pending.is_some()
                || state.broken.is_some())
        {
            return None;
        }
        Some(self.fd.as_fd())
    }

    fn poll_socket(&self, timeout: Option<Duration>) -> bool {
        let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
        matches!(crate::sys::poll::poll(&mut fds, timeout), Ok(n) if n > 0)
    }

    /// Whether the socket says, right now, that the other side is gone:
    /// `HUP` or `ERR`, or any of the events in `also`.
    fn socket_says_gone(&self, also: PollFlags) -> bool {
        let mut fds = [PollFd::new(&self.fd, also)];
        matches!(crate::sys::poll::poll(&mut fds, Some(Duration::ZERO)), Ok(n) if n > 0)
            && fds[0]
                .revents()
                .intersects(also | PollFlags::HUP | PollFlags::ERR)
    }

    /// Sends `bytes` as one message, without encoding them.
    pub fn send_bytes(&self, bytes: &[u8]) -> Result<(), Error> {
        let mut send = lock(&self.send_state);
        if bytes.len() >= LANE_MIN {
            return self.send_by_lane(&mut send.lane, FrameKind::Bytes, bytes, &[]);
        }
        let _guard = self.lock_sending()?;
        wire::send_raw_frame(self.fd.as_fd(), FrameKind::Bytes, bytes).map_err(send_error)
    }

    /// Receives one message as bytes (what [`send_bytes`](Self::send_bytes)
    /// sent, or the encoding of what `send` sent).
    pub fn recv_bytes(&self) -> Result<Vec<u8>, RecvError> {
        let _turn = self.recv_turn.take(None);
        let mut state = lock(&self.recv_state);
        let (_, at) = self
            .recv_frame(&mut state, None)
            .map_err(without_deadline)?;
        Ok(state.take_payload(at))
    }

    /// Takes this end's send lock. A sender that died holding it may have
    /// left half a message in the stream, which no later send can repair.
    fn lock_sending(&self) -> Result<SendLockGuard<'_>, Error> {
        loop {
            if let Some(guard) = self.try_lock_sending(Deadline::Never)? {
                return Ok(guard);
            }
        }
    }

    /// Takes this end's send lock if it comes within `wait`: `None` if a
    /// live sender still holds it then (as [`lock_sending`](Self::lock_sending)
    /// otherwise).
    fn try_lock_sending(&self, wait: Deadline) -> Result<Option<SendLockGuard<'_>>, Error> {
        if !self.end.writable {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "this end of the pipe is receive-only",
            ));
        }
        let lock = self.end.locks.of(self.end.side);
        match lock.acquire(wait) {
            Acquisition::Acquired => Ok(Some(SendLockGuard(lock))),
            Acquisition::TimedOut => Ok(None),
            Acquisition::OwnerDied(pid) => {
                // Its half-written message is in the stream for good:
                // close this direction for every process, so the
                // receiver sees the stream end after the garbage instead
                // of later messages spliced into it.
                let _ = rustix::net::shutdown(&self.fd, Shutdown::Write);
                Err(Error::new(
                    ErrorKind::Disconnected,
                    format!(
                        "process {pid} died while sending on this end; the stream is no longer usable"
                    ),
                ))
            }
        }
    }

    /// Whether the sender of the message now arriving died in the middle
    /// of it: the other side's send lock is held by a dead process.
    fn sender_died(&self) -> bool {
        self.end.locks.of(self.end.side ^ 1).holder_is_dead()
    }

    /// Receives one frame; its payload is where [`RecvState::payload`] says.
    /// With a `deadline`, a message not whole by then is `Timeout`, and the
    /// next receive goes on with it (nothing is lost or broken).
    fn recv_frame(
        &self,
        state: &mut RecvState,
        deadline: Option<Instant>,
    ) -> Result<wire::ReceivedFrame, RecvTimeoutError> {
        if !self.end.readable {
            return Err(RecvTimeoutError::Failed(Error::new(
                ErrorKind::InvalidInput,
                "this end of the pipe is send-only",
            )));
        }
        if let Some(why) = &state.broken {
            return Err(RecvTimeoutError::Failed(Error::new(
                ErrorKind::Decode,
                format!("connection is broken: {why}"),
            )));
        }
        if state.lane_pending.is_some() {
            return self.go_on_by_lane(state, deadline);
        }
        let died = || self.sender_died();
        match state
            .reader
            .recv(self.fd.as_fd(), &mut state.buf, Some(&died), deadline)
        {
            Ok(Some((frame, at))) if frame.kind == FrameKind::Lane => {
                self.recv_by_lane(state, frame, at, deadline)
            }
            Ok(Some(frame)) if matches!(frame.0.kind, FrameKind::Data | FrameKind::Bytes) => {
                Ok(frame)
            }
            // Whole, so the stream is intact; but no channel sends it (its
            // descriptors, if any, are closed with it).
            Ok(Some((frame, _))) => Err(RecvTimeoutError::Failed(Error::new(
                ErrorKind::Decode,
                format!(
                    "received a frame of kind {:?}, which is not a message on a channel",
                    frame.kind
                ),
            ))),
            Ok(None) => Err(RecvTimeoutError::Disconnected),
            Err(FrameError::TimedOut) => Err(RecvTimeoutError::Timeout),
            Err(FrameError::Io(e)) if e.raw_os_error() == Some(libc::ECONNRESET) => {
                Err(RecvTimeoutError::Disconnected)
            }
            Err(FrameError::Io(e)) => Err(RecvTimeoutError::Failed(Error::io("receiving", e))),
            Err(e) => {
                // The peer died mid-message or sent garbage: no later frame can be trusted.
                state.broken = Some(e.to_string());
                Err(RecvTimeoutError::Failed(e.into_error()))
            }
        }
    }
}

fn send_error(e: std::io::Error) -> Error {
    match e.raw_os_error() {
        Some(libc::EPIPE) | Some(libc::ECONNRESET) => {
            Error::new(ErrorKind::Disconnected, "the other end of the pipe is gone")
        }
        _ => Error::io("sending", e),
    }
}

impl<T: Serialize + DeserializeOwned + 'static> Connection<T> {
    /// Sends a message. Blocks while the other side's buffer is full.
    pub fn send(&self, message: &T) -> Result<(), Error> {
        // A `Vec<u8>` goes out as raw bytes, not element by element.
        if let Some(bytes) = (message as &dyn Any).downcast_ref::<Vec<u8>>() {
            return self.send_bytes(bytes);
        }
        let mut send = lock(&self.send_state);
        let SendState { frame, lane } = &mut *send;
        frame.clear();
        let result = frame.encode(message).and_then(|()| {
            if frame.payload().len() >= LANE_MIN {
                return self.send_by_lane(lane, FrameKind::Data, frame.payload(), frame.fds());
            }
            let _guard = self.lock_sending()?;
            frame
                .send(self.fd.as_fd(), FrameKind::Data)
                .map_err(send_error)
        });
        // Drop our copies of any handles in the message, sent or not: a kept
        // copy of a connection's end would hide its peer's disconnection.
        frame.clear();
        result
    }

    /// Receives a message, blocking until one arrives or the other side is gone.
    pub fn recv(&self) -> Result<T, RecvError> {
        let _turn = self.recv_turn.take(None);
        let mut state = lock(&self.recv_state);
        self.recv_locked(&mut state, None).map_err(without_deadline)
    }

    fn recv_locked(
        &self,
        state: &mut RecvState,
        deadline: Option<Instant>,
    ) -> Result<T, RecvTimeoutError> {
        let (frame, at) = self.recv_frame(state, deadline)?;
        if frame.kind == FrameKind::Bytes {
            // Sent by `send_bytes` or as a `Vec<u8>`: hand the bytes over.
            let bytes = state.take_payload(at);
            let boxed: Box<dyn Any> = Box::new(bytes);
            if let Ok(value) = boxed.downcast::<T>() {
                return Ok(*value);
            }
            return Err(RecvTimeoutError::Failed(Error::new(
                ErrorKind::Decode,
                "received raw bytes where a typed message was expected",
            )));
        }
        wire::decode(state.payload(at), frame.fds).map_err(RecvTimeoutError::Failed)
    }

    /// Receives a message if one is here whole; never waits. (A message that
    /// has only started arriving is `Empty` for now; a later receive gets
    /// it.)
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        self.recv_waiting(Some(Duration::ZERO))
            .map_err(|e| match e {
                RecvTimeoutError::Timeout => TryRecvError::Empty,
                RecvTimeoutError::Disconnected => TryRecvError::Disconnected,
                RecvTimeoutError::Failed(e) => TryRecvError::Failed(e),
            })
    }

    /// Receives a message, waiting at most `timeout` for all of it. A
    /// message still arriving at the deadline is `Timeout`, and is not lost:
    /// what came of it is kept, and the next receive (of any kind) goes on
    /// with it.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.recv_waiting(Some(timeout))
    }

    fn recv_waiting(&self, timeout: Option<Duration>) -> Result<T, RecvTimeoutError> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        // Another thread receiving has the turn: wait for it no longer than
        // the deadline.
        let Some(_turn) = self.recv_turn.take(deadline) else {
            return Err(RecvTimeoutError::Timeout);
        };
        // Holding the state while waiting, so no other thread can take the
        // message this one was woken for.
        let mut state = lock(&self.recv_state);
        let left = match deadline {
            Some(deadline) => Some(deadline.saturating_duration_since(Instant::now())),
            None => timeout,
        };
        if !state.reader.has_buffered() && state.lane_pending.is_none() && !self.poll_socket(left) {
            return Err(RecvTimeoutError::Timeout);
        }
        self.recv_locked(&mut state, deadline)
    }
}

impl<T> AsFd for Connection<T> {
    /// The socket underneath (Python's `fileno()`).
    ///
    /// Its readiness alone does not tell whether [`recv`](Connection::recv)
    /// would return at once: a message may already have been read ahead
    /// from it. To wait on several connections (and processes), use
    /// [`multiproc::wait`](crate::wait()), which knows; for one,
    /// [`poll`](Connection::poll).
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl<T> Serialize for Connection<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let state = lock(&self.recv_state);
        // Bytes read ahead, or the first part of a large message whose
        // deadline passed: the copy sent would miss them.
        let unread = state.reader.has_buffered() || state.lane_pending.is_some();
        drop(state);
        if unread {
            return Err(S::Error::custom(wire::handle_error(
                "this connection has received data not yet read; receive it before sending the connection"
                    .to_string(),
            )));
        }
        let index = wire::push_fd(self.fd.as_fd()).map_err(S::Error::custom)?;
        serializer.serialize_newtype_struct("multiproc::Connection", &(index, &self.end))
    }
}

impl<'de, T> Deserialize<'de> for Connection<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Connection<T>, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename = "multiproc::Connection")]
        struct Wire((u32, End));
        let Wire((index, end)) = Wire::deserialize(deserializer)?;
        let fd = wire::take_fd(index).map_err(D::Error::custom)?;
        Ok(Connection::new(fd, end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn announce(
        conn: &Connection<u32>,
        kind: FrameKind,
        len: usize,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) {
        let message = lane::LaneMessage {
            kind,
            len,
            first: 0,
        };
        lane::send_lane_frame(conn.fd.as_fd(), message, fds).unwrap();
    }

    fn failure(conn: &Connection<u32>) -> Error {
        match conn.recv() {
            Err(RecvError::Failed(e)) => e,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn a_lane_frame_without_a_lane_breaks_the_connection() {
        let (a, b) = Pipe::<u32>::duplex().unwrap();
        announce(&b, FrameKind::Data, 10, &[]);
        let err = failure(&a);
        assert!(
            err.is_decode() && err.to_string().contains("no lane"),
            "{err}"
        );
        b.send(&1).unwrap();
        assert!(failure(&a).to_string().contains("broken"));
    }

    #[test]
    fn a_lane_frame_with_some_other_descriptor_is_refused() {
        let (a, b) = Pipe::<u32>::duplex().unwrap();
        let (r, _w) = rustix::pipe::pipe().unwrap();
        announce(&b, FrameKind::Bytes, 10, &[r.as_fd()]);
        let err = failure(&a);
        // The reason is the error's source: `{:#}` shows the chain.
        assert!(
            format!("{err:#}").contains("not a shared-memory object"),
            "{err:?}"
        );

        let (a, b) = Pipe::<u32>::duplex().unwrap();
        let region = crate::sys::shm::SharedRegion::create("not-a-lane", 4096, 4096).unwrap();
        announce(&b, FrameKind::Bytes, 10, &[region.as_fd()]);
        let err = failure(&a);
        assert!(
            format!("{err:#}").contains("not a multiproc lane"),
            "{err:?}"
        );
    }

    #[test]
    fn a_lane_frame_for_a_bad_kind_or_length_is_refused() {
        let (a, b) = Pipe::<u32>::duplex().unwrap();
        let lane = SlotRing::create().unwrap();
        announce(&b, FrameKind::Call, 10, &[lane.as_fd()]);
        assert!(failure(&a).to_string().contains("message kind 1"));

        let (a, b) = Pipe::<u32>::duplex().unwrap();
        let mut payload = vec![FrameKind::Bytes as u8];
        payload.extend_from_slice(&(1u64 << 40).to_le_bytes());
        payload.extend_from_slice(&0u32.to_le_bytes());
        let frame =
            wire::encode_frame_for_tests(FrameKind::Lane as u8, payload.len() as u64, &payload);
        rustix::io::write(&b.fd, &frame).unwrap();
        assert!(failure(&a).to_string().contains("1099511627776"));

        let (a, b) = Pipe::<u32>::duplex().unwrap();
        let frame = wire::encode_frame_for_tests(FrameKind::Lane as u8, 3, &[6, 0, 0]);
        rustix::io::write(&b.fd, &frame).unwrap();
        assert!(failure(&a).to_string().contains("3-byte payload"));
    }

    #[test]
    fn the_socket_says_the_other_side_is_gone_only_when_it_is() {
        // Another test's spawn can fork between our `drop` and the look, and
        // its child holds a copy of every descriptor until it execs: so a
        // dropped end is gone *soon*, not at once.
        let soon = |gone: &dyn Fn() -> bool| {
            let start = std::time::Instant::now();
            while !gone() {
                assert!(start.elapsed() < Duration::from_secs(20), "never gone");
                std::thread::yield_now();
            }
        };
        // What a lane's writer (no extra events) and reader (`RDHUP`) ask.
        let (a, b) = Pipe::<u32>::duplex().unwrap();
        assert!(!a.socket_says_gone(PollFlags::empty()));
        assert!(!a.socket_says_gone(PollFlags::RDHUP));
        b.send(&1).unwrap();
        assert!(
            !a.socket_says_gone(PollFlags::RDHUP),
            "data is not a hang-up"
        );
        drop(b);
        soon(&|| a.socket_says_gone(PollFlags::empty()));
        assert!(a.socket_says_gone(PollFlags::RDHUP));

        // A simplex pair's own shutdowns must not look like the peer leaving.
        let (rx, tx) = Pipe::<u32>::simplex().unwrap();
        assert!(!rx.socket_says_gone(PollFlags::RDHUP));
        assert!(!tx.socket_says_gone(PollFlags::empty()));
        drop(tx);
        soon(&|| rx.socket_says_gone(PollFlags::RDHUP));
        let (rx, tx) = Pipe::<u32>::simplex().unwrap();
        drop(rx);
        soon(&|| tx.socket_says_gone(PollFlags::empty()));
    }

    #[test]
    fn messages_switch_between_lanes_and_the_socket() {
        let (a, b) = Pipe::<Vec<u8>>::duplex().unwrap();
        let b2 = Connection::<Vec<u8>>::new(b.fd.try_clone().unwrap(), b.end.clone());
        std::thread::scope(|s| {
            s.spawn(|| {
                // Two handles with a lane each, and small messages between.
                for i in 0..6u8 {
                    let sender = if i % 2 == 0 { &b } else { &b2 };
                    sender.send(&vec![i; (2 << 20) + usize::from(i)]).unwrap();
                    sender.send_bytes(&[i]).unwrap();
                }
            });
            for i in 0..6u8 {
                let big = a.recv().unwrap();
                assert_eq!(big.len(), (2 << 20) + usize::from(i));
                assert!(big.iter().all(|&x| x == i));
                assert_eq!(a.recv_bytes().unwrap(), [i]);
            }
        });
    }
}
