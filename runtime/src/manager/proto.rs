//! The manager's protocol: length-prefixed frames over a byte stream (a
//! Unix socket or TCP), each request one frame and each reply one frame.
//!
//! A frame is a 4-byte little-endian length, then that many bytes. The
//! length is checked against [`MAX_FRAME`] before anything is allocated,
//! and the buffer grows only as bytes arrive, so a header that lies costs
//! nothing. Fields inside a frame are fixed-size integers and
//! length-prefixed byte strings, read with [`Fields`], which checks every
//! length against what is left.

use std::io::{self, Read, Write};

use crate::error::{Error, ErrorKind};

/// The largest frame either side accepts (1 GiB).
#[cfg(not(test))]
pub(crate) const MAX_FRAME: usize = 1 << 30;
/// The largest frame either side accepts: 64 KiB in unit tests, so that
/// they can go over it.
#[cfg(test)]
pub(crate) const MAX_FRAME: usize = 64 << 10;

/// How much a frame buffer grows at most per read beyond what has arrived.
const GROW: usize = 64 << 10;

/// The most a frame buffer keeps between frames. A connection lives as long
/// as its process (a client's are pooled), so one large message must not
/// leave a buffer of its size behind for that long.
#[cfg(not(test))]
pub(crate) const KEEP: usize = 1 << 20;
/// The most a frame buffer keeps between frames: 16 KiB in unit tests,
/// under their [`MAX_FRAME`].
#[cfg(test)]
pub(crate) const KEEP: usize = 16 << 10;

/// Reads frames from a stream, reading ahead so that a small frame costs
/// one `read`.
#[derive(Debug, Default)]
pub(crate) struct FrameReader {
    /// Zero-filled once; grows only for a frame that does not fit.
    buf: Vec<u8>,
    /// Unread bytes are `buf[start..end]`.
    start: usize,
    end: usize,
}

/// Why no frame came.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The stream ended cleanly between frames.
    Closed,
    /// The stream ended inside a frame, or failed.
    Io(io::Error),
    /// The header announced more than [`MAX_FRAME`].
    TooLarge(usize),
}

impl FrameReader {
    /// The room its buffer takes.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Lets go of a large buffer once every frame in it has been read.
    pub(crate) fn release_idle(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > KEEP {
                self.buf = Vec::new();
            }
        }
    }

    /// Reads one frame; returns its bytes (valid until the next call).
    pub(crate) fn read<'a>(&'a mut self, stream: &mut impl Read) -> Result<&'a [u8], ReadError> {
        self.release_idle();
        loop {
            let avail = self.end - self.start;
            let need = if avail < 4 {
                4
            } else {
                let h = &self.buf[self.start..self.start + 4];
                let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
                if len > MAX_FRAME {
                    return Err(ReadError::TooLarge(len));
                }
                if avail >= 4 + len {
                    let at = self.start + 4;
                    self.start = at + len;
                    return Ok(&self.buf[at..at + len]);
                }
                4 + len
            };
            if self.start + need > self.buf.len() {
                self.buf.copy_within(self.start..self.end, 0);
                self.start = 0;
                self.end = avail;
                if need > self.buf.len() {
                    // At most double what has arrived, so that a header
                    // that lies costs no more memory than was sent.
                    let size = need.min(GROW.max(2 * avail)).max(GROW.min(need.max(4096)));
                    self.buf.resize(size.max(self.buf.len()), 0);
                }
            }
            let n = loop {
                match stream.read(&mut self.buf[self.end..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(ReadError::Io(e)),
                }
            };
            if n == 0 {
                return Err(if avail == 0 {
                    ReadError::Closed
                } else {
                    ReadError::Io(io::ErrorKind::UnexpectedEof.into())
                });
            }
            self.end += n;
        }
    }
}

/// A frame being built: the length is filled in by [`Frame::send`].
#[derive(Debug)]
pub(crate) struct Frame {
    pub(crate) buf: Vec<u8>,
}

impl Default for Frame {
    fn default() -> Frame {
        Frame::new()
    }
}

impl Frame {
    pub(crate) fn new() -> Frame {
        Frame { buf: vec![0; 4] }
    }

    /// Empties the frame for reuse (keeping at most [`KEEP`] bytes of room).
    pub(crate) fn clear(&mut self) {
        self.buf.clear();
        self.buf.shrink_to(KEEP);
        self.buf.extend_from_slice(&[0; 4]);
    }

    pub(crate) fn u8(&mut self, v: u8) -> &mut Frame {
        self.buf.push(v);
        self
    }

    pub(crate) fn u64(&mut self, v: u64) -> &mut Frame {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A length-prefixed byte string.
    pub(crate) fn bytes(&mut self, v: &[u8]) -> &mut Frame {
        self.buf.extend_from_slice(&(v.len() as u64).to_le_bytes());
        self.buf.extend_from_slice(v);
        self
    }

    /// Starts a length-prefixed byte string written in place by `f`.
    pub(crate) fn bytes_with<E>(
        &mut self,
        f: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<&mut Frame, E> {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0; 8]);
        f(&mut self.buf)?;
        let len = (self.buf.len() - at - 8) as u64;
        self.buf[at..at + 8].copy_from_slice(&len.to_le_bytes());
        Ok(self)
    }

    /// `None` as 0; `Some(v)` as 1 then the byte string.
    pub(crate) fn opt(&mut self, v: Option<&[u8]>) -> &mut Frame {
        match v {
            None => self.u8(0),
            Some(v) => self.u8(1).bytes(v),
        }
    }

    /// Writes the frame to `stream` in one `write_all`.
    pub(crate) fn send(&mut self, stream: &mut impl Write) -> Result<(), Error> {
        let len = self.buf.len() - 4;
        if len > MAX_FRAME {
            return Err(Error::new(
                ErrorKind::Encode,
                format!("a manager message of {len} bytes is over the limit of {MAX_FRAME}"),
            ));
        }
        self.buf[..4].copy_from_slice(&(len as u32).to_le_bytes());
        stream
            .write_all(&self.buf)
            .map_err(|e| Error::new(ErrorKind::Disconnected, "the manager is gone").with_source(e))
    }
}

/// Reads the fields of a received frame, each checked against what is left.
#[derive(Debug)]
pub(crate) struct Fields<'a> {
    rest: &'a [u8],
}

/// A frame's fields did not check out.
pub(crate) fn malformed() -> Error {
    Error::new(ErrorKind::Decode, "malformed manager message")
}

impl<'a> Fields<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Fields<'a> {
        Fields { rest: bytes }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.rest.len() < n {
            return Err(malformed());
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u64(&mut self) -> Result<u64, Error> {
        let b = self.take(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    pub(crate) fn bool(&mut self) -> Result<bool, Error> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(malformed()),
        }
    }

    pub(crate) fn bytes(&mut self) -> Result<&'a [u8], Error> {
        let len = self.u64()?;
        let len = usize::try_from(len).map_err(|_| malformed())?;
        self.take(len)
    }

    pub(crate) fn opt(&mut self) -> Result<Option<&'a [u8]>, Error> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.bytes().map(Some),
            _ => Err(malformed()),
        }
    }

    /// A count of items that each take at least `min` bytes, checked
    /// against what is left (so it can size a vector safely).
    pub(crate) fn count(&mut self, min: usize) -> Result<usize, Error> {
        let n = usize::try_from(self.u64()?).map_err(|_| malformed())?;
        if n.saturating_mul(min.max(1)) > self.rest.len() {
            return Err(malformed());
        }
        Ok(n)
    }

    /// Fails unless every byte was used.
    pub(crate) fn end(&self) -> Result<(), Error> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(malformed())
        }
    }
}

/// The permit token of a semaphore release that is no guard's.
pub(crate) const NO_PERMIT: u64 = 0;

/// A timeout on the wire: milliseconds, [`FOREVER`] for none.
pub(crate) const FOREVER: u64 = u64::MAX;

/// Encodes an optional timeout, rounded up to whole milliseconds, so that a
/// short one still waits (only a zero one is a mere try).
pub(crate) fn timeout_ms(t: Option<std::time::Duration>) -> u64 {
    match t {
        None => FOREVER,
        Some(d) => u64::try_from(d.as_nanos().div_ceil(1_000_000))
            .unwrap_or(FOREVER - 1)
            .min(FOREVER - 1),
    }
}

/// What a request asks for. The numbers are the wire's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Op {
    Ping = 1,
    Create = 2,
    /// Takes one more reference to an object (for a proxy about to travel).
    IncRef = 3,
    /// Lets go of one reference; the object is freed with its last.
    DecRef = 4,
    /// How many objects the server holds (for tests).
    Objects = 5,
    /// Creates an object under a name, or finds the one made under it.
    CreateNamed = 6,
    // Maps (dict, namespace).
    MapGet = 10,
    MapInsert = 11,
    MapRemove = 12,
    MapContains = 13,
    MapLen = 14,
    MapKeys = 15,
    MapValues = 16,
    MapItems = 17,
    MapUpdate = 18,
    MapClear = 19,
    MapUpdateWith = 20,
    MapSetDefault = 21,
    MapPopItem = 22,
    // Sequences (list, array).
    SeqPush = 30,
    SeqGet = 31,
    SeqSet = 32,
    SeqPop = 33,
    SeqInsert = 34,
    SeqRemove = 35,
    SeqLen = 36,
    SeqExtend = 37,
    SeqSnapshot = 38,
    SeqReverse = 39,
    // Single values.
    ValueGet = 40,
    ValueSet = 41,
    ValueUpdateWith = 42,
    // Queue.
    QueuePut = 50,
    QueueGet = 51,
    QueueLen = 52,
    // Lock, RLock, Condition's lock.
    Acquire = 60,
    Release = 61,
    // Semaphores.
    SemAcquire = 65,
    SemRelease = 66,
    SemValue = 67,
    // Condition.
    CondWait = 70,
    CondNotify = 71,
    // Event.
    EventSet = 75,
    EventClear = 76,
    EventIsSet = 77,
    EventWait = 78,
    // Barrier.
    BarrierWait = 80,
    BarrierAbort = 81,
    BarrierReset = 82,
    BarrierWaiting = 83,
    BarrierBroken = 84,
    // Sequences, added later.
    SeqPosition = 90,
    SeqCount = 91,
}

impl Op {
    pub(crate) fn from_u8(v: u8) -> Option<Op> {
        use Op::*;
        const ALL: &[Op] = &[
            Ping,
            Create,
            IncRef,
            DecRef,
            Objects,
            CreateNamed,
            MapGet,
            MapInsert,
            MapRemove,
            MapContains,
            MapLen,
            MapKeys,
            MapValues,
            MapItems,
            MapUpdate,
            MapClear,
            MapUpdateWith,
            MapSetDefault,
            MapPopItem,
            SeqPush,
            SeqGet,
            SeqSet,
            SeqPop,
            SeqInsert,
            SeqRemove,
            SeqLen,
            SeqExtend,
            SeqSnapshot,
            SeqReverse,
            SeqPosition,
            SeqCount,
            ValueGet,
            ValueSet,
            ValueUpdateWith,
            QueuePut,
            QueueGet,
            QueueLen,
            Acquire,
            Release,
            SemAcquire,
            SemRelease,
            SemValue,
            CondWait,
            CondNotify,
            EventSet,
            EventClear,
            EventIsSet,
            EventWait,
            BarrierWait,
            BarrierAbort,
            BarrierReset,
            BarrierWaiting,
            BarrierBroken,
        ];
        ALL.iter().copied().find(|op| *op as u8 == v)
    }
}

/// What [`Op::Create`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum ObjKind {
    Map = 1,
    Seq = 2,
    /// A sequence of fixed length.
    FixedSeq = 3,
    Value = 4,
    Queue = 5,
    Lock = 6,
    RLock = 7,
    Semaphore = 8,
    BoundedSemaphore = 9,
    Condition = 10,
    Event = 11,
    Barrier = 12,
}

impl ObjKind {
    pub(crate) fn from_u8(v: u8) -> Option<ObjKind> {
        use ObjKind::*;
        [
            Map,
            Seq,
            FixedSeq,
            Value,
            Queue,
            Lock,
            RLock,
            Semaphore,
            BoundedSemaphore,
            Condition,
            Event,
            Barrier,
        ]
        .into_iter()
        .find(|k| *k as u8 == v)
    }
}

/// Reply status bytes.
pub(crate) const OK: u8 = 0;
pub(crate) const ERR: u8 = 1;

/// Error kinds on the wire (a reply's error), both ways.
pub(crate) fn kind_code(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::Timeout => 1,
        ErrorKind::Disconnected => 2,
        ErrorKind::Decode => 3,
        ErrorKind::Encode => 4,
        ErrorKind::UnknownEntry => 5,
        ErrorKind::Panicked => 6,
        ErrorKind::BrokenBarrier => 7,
        ErrorKind::NotOwner => 8,
        ErrorKind::TooManyReleases => 9,
        ErrorKind::OutOfRange => 10,
        ErrorKind::DuplicateEntry => 11,
        ErrorKind::InvalidInput => 12,
        _ => 0,
    }
}

pub(crate) fn code_kind(code: u8) -> ErrorKind {
    match code {
        1 => ErrorKind::Timeout,
        2 => ErrorKind::Disconnected,
        3 => ErrorKind::Decode,
        4 => ErrorKind::Encode,
        5 => ErrorKind::UnknownEntry,
        6 => ErrorKind::Panicked,
        7 => ErrorKind::BrokenBarrier,
        8 => ErrorKind::NotOwner,
        9 => ErrorKind::TooManyReleases,
        10 => ErrorKind::OutOfRange,
        11 => ErrorKind::DuplicateEntry,
        12 => ErrorKind::InvalidInput,
        _ => ErrorKind::Io,
    }
}
