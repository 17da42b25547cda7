//! A worker's connection, as the pool and the worker loop use it: a
//! [`Connection`] to a local worker, or a TCP stream to one on another
//! machine. The pool's end of either ([`QueuedConnection`],
//! [`TcpLink::queued`]) never waits for the worker to read: the pool sends
//! under its bookkeeping's lock.

use std::collections::VecDeque;
use std::fmt;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::Duration;

use super::proto::Msg;
use super::scheduler::lock;
use super::task;
use crate::pipe::Encoded;
use crate::wire::OutFrame;
use crate::{Connection, Error, ErrorKind, RecvError, RecvTimeoutError};

/// Carries [`Msg`]s both ways. `send` and `recv` may run at once on two
/// threads.
pub(crate) trait Link: Send + Sync + fmt::Debug {
    /// Sends one message (or queues it, on a link that sends from a
    /// thread of its own). An [`ErrorKind::Encode`] error leaves the link
    /// usable; any other means the peer is gone.
    fn send(&self, msg: &Msg) -> Result<(), Error>;
    /// Receives one message.
    fn recv(&self) -> Result<Msg, RecvError>;
    /// Receives one message if it comes within `timeout`: `None` if not
    /// (a message still arriving then is kept for the next receive). A
    /// link that cannot wait with a deadline waits for ever.
    fn recv_within(&self, timeout: Duration) -> Option<Result<Msg, RecvError>> {
        let _ = timeout;
        Some(self.recv())
    }
}

impl Link for Connection<Msg> {
    fn send(&self, msg: &Msg) -> Result<(), Error> {
        Connection::send(self, msg)
    }

    fn recv(&self) -> Result<Msg, RecvError> {
        Connection::recv(self)
    }

    fn recv_within(&self, timeout: Duration) -> Option<Result<Msg, RecvError>> {
        match self.recv_timeout(timeout) {
            Ok(msg) => Some(Ok(msg)),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => Some(Err(RecvError::Disconnected)),
            Err(RecvTimeoutError::Failed(e)) => Some(Err(RecvError::Failed(e))),
        }
    }
}

/// The pool's end of a local worker's connection. `send` encodes on the
/// calling thread (so a message that cannot go fails there, alone) and
/// writes what the socket takes at once; a message the socket does not
/// take whole (the worker is not reading, or it goes through the lane),
/// and every message after it until that one is written, goes to a thread
/// of the link's own, in order, which waits for the worker to read. So a
/// send never waits for the worker: the pool sends under its bookkeeping's
/// lock, which a worker that stops reading (its process stopped) must not
/// hold. A write that fails shuts the connection, so the slot's receive
/// ends and the worker is buried as for any lost connection.
#[derive(Debug)]
pub(crate) struct QueuedConnection {
    shared: Arc<Outlet>,
}

/// What a [`QueuedConnection`] and its writer thread share.
#[derive(Debug)]
struct Outlet {
    conn: Connection<Msg>,
    outbox: Mutex<Outbox>,
    /// Wakes the writer for a message queued, or the link closed.
    wake: Condvar,
}

/// The messages a [`QueuedConnection`] has not written yet.
#[derive(Debug, Default)]
struct Outbox {
    /// In order; the first may be written part-way.
    queue: VecDeque<Encoded>,
    /// The writer holds a message taken from the queue, not all written.
    writing: bool,
    /// The link was dropped: the writer ends once the queue is written.
    closed: bool,
    /// A write failed (the worker is gone, or the stream cannot go on):
    /// every send fails from then on.
    broken: bool,
    /// The last message written whole by its sender, whose buffer the
    /// next one is encoded into (it is under the lane's size).
    spare: Option<Encoded>,
}

impl Outbox {
    /// Whether a message may be written by its sender at once: nothing
    /// is waiting to go before it.
    fn clear(&self) -> bool {
        self.queue.is_empty() && !self.writing
    }
}

impl QueuedConnection {
    /// The pool's end of a local worker's connection, with its writer
    /// thread.
    pub(crate) fn new(conn: Connection<Msg>) -> Result<Arc<QueuedConnection>, Error> {
        let shared = Arc::new(Outlet {
            conn,
            outbox: Mutex::new(Outbox::default()),
            wake: Condvar::new(),
        });
        let writer = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("multiproc-link-writer".into())
            .spawn(move || writer.write_out())
            .map_err(|e| task::io_error("starting a thread to send to a pool worker", e))?;
        Ok(Arc::new(QueuedConnection { shared }))
    }
}

impl Outlet {
    /// The writer thread: writes the queue's messages in order, waiting
    /// for the worker to read them, until the link is dropped and all are
    /// written, or a write fails.
    fn write_out(&self) {
        loop {
            let message = {
                let mut outbox = lock(&self.outbox);
                outbox.writing = false;
                loop {
                    if let Some(message) = outbox.queue.pop_front() {
                        outbox.writing = true;
                        break message;
                    }
                    if outbox.closed || outbox.broken {
                        return;
                    }
                    outbox = self.wake.wait(outbox).unwrap_or_else(|p| p.into_inner());
                }
            };
            if self.conn.write_encoded(message).is_err() {
                self.break_off();
                return;
            }
        }
    }

    /// A write failed: drops what is queued (closing its descriptors) and
    /// shuts the connection, so the worker reads its end and the pool's
    /// receive on it ends.
    fn break_off(&self) {
        let dropped = {
            let mut outbox = lock(&self.outbox);
            outbox.broken = true;
            outbox.writing = false;
            std::mem::take(&mut outbox.queue)
        };
        drop(dropped);
        let _ = rustix::net::shutdown(&self.conn, rustix::net::Shutdown::Both);
    }
}

impl Drop for QueuedConnection {
    fn drop(&mut self) {
        lock(&self.shared.outbox).closed = true;
        self.shared.wake.notify_one();
    }
}

impl Link for QueuedConnection {
    fn send(&self, msg: &Msg) -> Result<(), Error> {
        let lost = || task::error(ErrorKind::Disconnected, "the connection was lost");
        let mut outbox = lock(&self.shared.outbox);
        if outbox.broken {
            return Err(lost());
        }
        let spare = outbox.spare.take();
        let mut message = self.shared.conn.encode(msg, spare)?;
        if outbox.clear() {
            match self.shared.conn.try_write_encoded(&mut message) {
                Ok(true) => {
                    outbox.spare = Some(message);
                    return Ok(());
                }
                Ok(false) => {}
                Err(e) => {
                    drop(outbox);
                    drop(message);
                    self.shared.break_off();
                    return Err(e);
                }
            }
        }
        outbox.queue.push_back(message);
        drop(outbox);
        self.shared.wake.notify_one();
        Ok(())
    }

    fn recv(&self) -> Result<Msg, RecvError> {
        Link::recv(&self.shared.conn)
    }

    fn recv_within(&self, timeout: Duration) -> Option<Result<Msg, RecvError>> {
        Link::recv_within(&self.shared.conn, timeout)
    }
}

/// The largest message either side of a TCP link accepts: a larger
/// announcement is a protocol error, not an allocation.
pub(crate) const MAX_TCP_MESSAGE: u64 = 1 << 30;

/// Why a value holding a handle cannot go to a worker on another machine.
pub(crate) const REMOTE_HANDLE: &str = "holds a handle to shared memory or a local \
     socket (a Queue, Lock, Value, Array, Pipe, Fd, or a local Manager's proxy), which \
     cannot cross to another machine; use a Manager served over TCP \
     (Manager::serve / Manager::connect) to share state with workers on other nodes";

/// Each message: its length (8 bytes, little-endian), then its encoding.
const LEN_BYTES: usize = 8;

/// A message up to this size is copied behind its length and sent in one
/// write; a larger one is sent where it is.
const SMALL_MESSAGE: usize = 64 << 10;

/// A link over TCP (after the handshake): messages are encoded as on a
/// [`Connection`], but carry no descriptors — a handle that needs one
/// cannot cross to another machine.
#[derive(Debug)]
pub(crate) struct TcpLink {
    reader: Mutex<(TcpStream, Vec<u8>)>,
    writer: Writer,
    /// Another handle of the socket, to shut it down or set its options
    /// without waiting for a send in progress.
    control: TcpStream,
    /// Why the link broke, once it did (for the worker's obituary).
    broken: Arc<Mutex<Option<String>>>,
}

/// How a [`TcpLink`] sends.
#[derive(Debug)]
enum Writer {
    /// On the calling thread, which waits until the message is written.
    Direct(Mutex<TcpStream>),
    /// By a thread of the link's own, in order: `send` waits for no peer.
    Queued(mpsc::Sender<OutFrame>),
}

impl TcpLink {
    /// A link whose `send` writes on the calling thread (a worker's).
    pub(crate) fn new(stream: TcpStream) -> Result<Arc<TcpLink>, Error> {
        let writer = Mutex::new(clone(&stream)?);
        TcpLink::with_writer(stream, Writer::Direct(writer))
    }

    /// A link whose `send` only queues the message for a thread of its
    /// own, which writes it (the pool's end: its sends are made under its
    /// bookkeeping's lock, which a peer that does not read, its node
    /// frozen, must not hold for as long as it takes to be declared lost).
    /// A write that fails shuts the connection, so a receive here ends.
    pub(crate) fn queued(stream: TcpStream) -> Result<Arc<TcpLink>, Error> {
        let (tx, rx) = mpsc::channel::<OutFrame>();
        let link = TcpLink::with_writer(stream, Writer::Queued(tx))?;
        let stream = clone(&link.control)?;
        let broken = Arc::clone(&link.broken);
        std::thread::Builder::new()
            .name("multiproc-link-writer".into())
            .spawn(move || {
                for frame in rx {
                    if let Err(e) = write_message(&stream, frame.payload()) {
                        lock(&broken).get_or_insert_with(|| format!("sending failed: {e}"));
                        let _ = stream.shutdown(Shutdown::Both);
                        return;
                    }
                }
            })
            .map_err(|e| task::io_error("starting a thread to send on a TCP link", e))?;
        Ok(link)
    }

    fn with_writer(stream: TcpStream, writer: Writer) -> Result<Arc<TcpLink>, Error> {
        Ok(Arc::new(TcpLink {
            control: clone(&stream)?,
            reader: Mutex::new((stream, Vec::new())),
            writer,
            broken: Arc::new(Mutex::new(None)),
        }))
    }

    /// Ends the connection both ways: the peer reads its end, and a
    /// `recv` here returns [`RecvError::Disconnected`].
    pub(crate) fn shut(&self) {
        let _ = self.control.shutdown(Shutdown::Both);
    }

    /// Bounds each read (`None`: no bound); a read that runs out of time
    /// breaks the link.
    pub(crate) fn set_read_timeout(&self, timeout: Option<std::time::Duration>) {
        let _ = self.control.set_read_timeout(timeout);
    }

    /// Why the link broke, if it broke rather than being closed in order.
    pub(crate) fn broken(&self) -> Option<String> {
        lock(&self.broken).clone()
    }

    fn record(&self, why: impl Into<String>) {
        lock(&self.broken).get_or_insert_with(|| why.into());
    }
}

fn clone(stream: &TcpStream) -> Result<TcpStream, Error> {
    stream
        .try_clone()
        .map_err(|e| task::io_error("duplicating a TCP socket", e))
}

/// Writes one message: its length, then `payload` as it is (not copied
/// behind it): two writes, in one segment when the payload is small.
fn write_message(mut stream: &TcpStream, payload: &[u8]) -> std::io::Result<()> {
    let len = (payload.len() as u64).to_le_bytes();
    if payload.len() <= SMALL_MESSAGE {
        let mut bytes = Vec::with_capacity(LEN_BYTES + payload.len());
        bytes.extend_from_slice(&len);
        bytes.extend_from_slice(payload);
        stream.write_all(&bytes)
    } else {
        stream.write_all(&len)?;
        stream.write_all(payload)
    }
}

impl Link for TcpLink {
    fn send(&self, msg: &Msg) -> Result<(), Error> {
        let mut frame = OutFrame::new();
        frame.encode(msg)?;
        if !frame.fds().is_empty() {
            return Err(task::error(ErrorKind::Encode, REMOTE_HANDLE));
        }
        let payload = frame.payload();
        let len = payload.len() as u64;
        // The peer would refuse it and drop the connection: a message
        // too large fails alone, and the link stays usable.
        if len > MAX_TCP_MESSAGE {
            return Err(task::error(
                ErrorKind::Encode,
                format!(
                    "the message of {len} bytes is over the limit of {MAX_TCP_MESSAGE} bytes \
                     between hosts"
                ),
            ));
        }
        let lost = || task::error(ErrorKind::Disconnected, "the connection was lost");
        match &self.writer {
            Writer::Direct(stream) => write_message(&lock(stream), payload).map_err(|e| {
                self.record(format!("sending failed: {e}"));
                lost().with_source(e)
            }),
            Writer::Queued(outbox) => {
                if self.broken().is_some() {
                    return Err(lost());
                }
                outbox.send(frame).map_err(|_| lost())
            }
        }
    }

    fn recv(&self) -> Result<Msg, RecvError> {
        self.recv_at_most(MAX_TCP_MESSAGE)
    }
}

impl TcpLink {
    /// Receives one message of at most `limit` bytes (a larger
    /// announcement is refused before anything of it is read).
    pub(crate) fn recv_at_most(&self, limit: u64) -> Result<Msg, RecvError> {
        let mut guard = lock(&self.reader);
        let (stream, buf) = &mut *guard;
        let mut len = [0u8; LEN_BYTES];
        let mut got = 0;
        while got < LEN_BYTES {
            match stream.read(&mut len[got..]) {
                Ok(0) if got == 0 => return Err(RecvError::Disconnected),
                Ok(0) => {
                    self.record("the connection ended in the middle of a message");
                    return Err(RecvError::Disconnected);
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.record(e.to_string());
                    return Err(RecvError::Disconnected);
                }
            }
        }
        let len = u64::from_le_bytes(len);
        if len > limit {
            let why =
                format!("the peer announced a message of {len} bytes, over the limit of {limit}");
            self.record(why.clone());
            return Err(RecvError::Failed(task::error(ErrorKind::Decode, why)));
        }
        buf.clear();
        // Grows with what arrives, not with what was announced.
        match (&mut *stream).take(len).read_to_end(buf) {
            Ok(n) if n as u64 == len => {}
            Ok(_) => {
                self.record("the connection ended in the middle of a message");
                return Err(RecvError::Disconnected);
            }
            Err(e) => {
                self.record(e.to_string());
                return Err(RecvError::Disconnected);
            }
        }
        let msg = crate::wire::decode::<Msg>(buf, Vec::new()).map_err(RecvError::Failed);
        if buf.capacity() > 1 << 20 {
            *buf = Vec::new();
        }
        msg
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A link and the raw peer socket at its other end.
    fn pair() -> (Arc<TcpLink>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (ours, _) = listener.accept().unwrap();
        (TcpLink::new(ours).unwrap(), peer)
    }

    #[test]
    fn a_message_goes_both_ways() {
        let (a, b) = pair();
        let b = TcpLink::new(b).unwrap();
        a.send(&Msg::Ready).unwrap();
        assert!(matches!(b.recv(), Ok(Msg::Ready)));
        b.send(&Msg::Stop).unwrap();
        assert!(matches!(a.recv(), Ok(Msg::Stop)));
        a.shut();
        assert!(matches!(b.recv(), Err(RecvError::Disconnected)));
        assert!(b.broken().is_none(), "an orderly end is not a break");
    }

    #[test]
    fn an_oversized_announcement_is_refused_before_any_allocation() {
        let (link, mut peer) = pair();
        peer.write_all(&(MAX_TCP_MESSAGE + 1).to_le_bytes())
            .unwrap();
        match link.recv() {
            Err(RecvError::Failed(e)) => {
                assert_eq!(e.kind(), ErrorKind::Decode);
                assert!(e.to_string().contains("over the limit"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_peer_that_dies_mid_message_is_a_disconnection_with_the_reason() {
        let (link, mut peer) = pair();
        peer.write_all(&100u64.to_le_bytes()).unwrap();
        peer.write_all(&[1, 2, 3]).unwrap();
        drop(peer);
        assert!(matches!(link.recv(), Err(RecvError::Disconnected)));
        assert!(link.broken().unwrap().contains("middle of a message"));
    }

    #[test]
    fn malformed_bytes_are_a_decode_error() {
        let (link, mut peer) = pair();
        peer.write_all(&4u64.to_le_bytes()).unwrap();
        peer.write_all(&[0xff, 0xff, 0xff, 0xff]).unwrap();
        match link.recv() {
            Err(RecvError::Failed(e)) => assert_eq!(e.kind(), ErrorKind::Decode, "{e}"),
            other => panic!("{other:?}"),
        }
    }
}
