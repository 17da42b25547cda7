//! Frames on a Unix socket, with file descriptors riding beside them.
//!
//! A frame is a 16-byte header — magic, protocol version, kind, descriptor
//! count, payload length — followed by the payload. The length is checked
//! against [`MAX_FRAME_LEN`] before anything is allocated. Descriptors travel
//! as `SCM_RIGHTS` on the same `sendmsg` as the header.
//!
//! Handles (such as [`Fd`](crate::Fd)) serialize by moving their descriptor
//! into a side table that only this module installs, around an encode or a
//! decode; the value itself carries only the descriptor's index.

use std::cell::{Cell, RefCell};
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::event::{PollFd, PollFlags};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec;
use crate::error::{Error, ErrorKind};
use crate::sys::futex::CHECK_PERIOD;

/// The largest payload a frame may announce.
pub(crate) const MAX_FRAME_LEN: u64 = 1 << 31;
/// Most descriptors one frame may carry (the kernel's `SCM_MAX_FD`).
pub(crate) const MAX_FDS: usize = 253;
pub(crate) const HEADER_LEN: usize = 16;
const MAGIC: [u8; 4] = *b"MPRC";
const VERSION: u8 = 1;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    /// Parent to child: the entry to run and its arguments.
    Call = 1,
    /// Child to parent: the entry's return value.
    Value = 2,
    /// Child to parent: the entry panicked.
    Panic = 3,
    /// Child to parent: the child could not run the entry.
    Failure = 4,
    /// A message on a channel, encoded by the codec.
    Data = 5,
    /// Raw bytes on a channel (`send_bytes`), or a `Vec<u8>` sent as is.
    Bytes = 6,
    /// Child to parent: the return value, too large for the socket's
    /// buffer, is in a memfd (the frame's first descriptor); the payload is
    /// its length.
    SpilledValue = 7,
    /// A large message on a channel, sent through the connection's lane
    /// (`sys::lane`, the frame's last descriptor): the payload is a
    /// [`LaneMessage`], the message's own kind (`Data` or `Bytes`, one
    /// byte), its length (u64) and the lane slot where it starts (u32).
    Lane = 8,
}

impl Kind {
    fn from_u8(byte: u8) -> Option<Kind> {
        Some(match byte {
            1 => Kind::Call,
            2 => Kind::Value,
            3 => Kind::Panic,
            4 => Kind::Failure,
            5 => Kind::Data,
            6 => Kind::Bytes,
            7 => Kind::SpilledValue,
            8 => Kind::Lane,
            _ => return None,
        })
    }
}

/// A frame being built: header space first, then the payload.
#[derive(Debug)]
pub(crate) struct OutFrame {
    buf: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl OutFrame {
    pub(crate) fn new() -> OutFrame {
        OutFrame {
            buf: vec![0; HEADER_LEN],
            fds: Vec::new(),
        }
    }

    /// The encoded payload (after the header space).
    pub(crate) fn payload(&self) -> &[u8] {
        &self.buf[HEADER_LEN..]
    }

    /// The descriptors collected while encoding.
    pub(crate) fn fds(&self) -> &[OwnedFd] {
        &self.fds
    }

    /// Moves the payload into a new memfd, which becomes the first
    /// descriptor, and leaves the payload's length (8 bytes) in its place:
    /// sending the frame then never waits for the reader.
    pub(crate) fn spill(&mut self) -> io::Result<()> {
        let memfd = spill(&self.buf[HEADER_LEN..])?;
        let len = (self.buf.len() - HEADER_LEN) as u64;
        self.buf.truncate(HEADER_LEN);
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.fds.insert(0, memfd);
        Ok(())
    }

    /// Empties the frame for reuse, keeping its buffer.
    pub(crate) fn clear(&mut self) {
        self.buf.truncate(HEADER_LEN);
        self.fds.clear();
    }

    /// Appends the encoding of `value`, collecting the descriptors of any
    /// handles inside it.
    pub(crate) fn encode<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let (result, fds) = encoding(|| codec::encode_into(value, &mut self.buf));
        result?;
        self.fds.extend(fds);
        if self.fds.len() > MAX_FDS {
            return Err(Error::new(
                ErrorKind::Encode,
                format!(
                    "a message may carry at most {MAX_FDS} handles, this one has {}",
                    self.fds.len()
                ),
            ));
        }
        Ok(())
    }

    /// Sends the frame; blocks until all of it is written.
    pub(crate) fn send(&mut self, sock: BorrowedFd<'_>, kind: Kind) -> io::Result<()> {
        let len = (self.buf.len() - HEADER_LEN) as u64;
        if len > MAX_FRAME_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("message of {len} bytes is over the {MAX_FRAME_LEN}-byte limit"),
            ));
        }
        let header = header(kind, self.fds.len() as u16, len);
        self.buf[..HEADER_LEN].copy_from_slice(&header);
        let borrowed: Vec<BorrowedFd<'_>> = self.fds.iter().map(|fd| fd.as_fd()).collect();
        let result = send_all(sock, &self.buf, &borrowed);
        // Our copies must not outlive the send: a kept copy of a
        // connection's end would stop its peer from ever seeing it gone.
        self.fds.clear();
        result
    }
}

fn header(kind: Kind, nfds: u16, len: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC);
    h[4] = VERSION;
    h[5] = kind as u8;
    h[6..8].copy_from_slice(&nfds.to_le_bytes());
    h[8..16].copy_from_slice(&len.to_le_bytes());
    h
}

/// Sends a frame whose payload is `payload` as is, without copying it into
/// a frame buffer first (header and payload go out in one `sendmsg`).
pub(crate) fn send_raw_frame(sock: BorrowedFd<'_>, kind: Kind, payload: &[u8]) -> io::Result<()> {
    let len = payload.len() as u64;
    if len > MAX_FRAME_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("message of {len} bytes is over the {MAX_FRAME_LEN}-byte limit"),
        ));
    }
    let head = header(kind, 0, len);
    let mut sent = 0;
    let total = HEADER_LEN + payload.len();
    while sent < total {
        let n = if sent < HEADER_LEN {
            let iov = [IoSlice::new(&head[sent..]), IoSlice::new(payload)];
            let mut no_fds = SendAncillaryBuffer::new(&mut []);
            rustix::net::sendmsg(sock, &iov, &mut no_fds, SendFlags::NOSIGNAL)
        } else {
            rustix::net::send(sock, &payload[sent - HEADER_LEN..], SendFlags::NOSIGNAL)
        };
        match n {
            Ok(n) => sent += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// What a [`Kind::Lane`] frame announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LaneMessage {
    /// The message's own kind: `Data` or `Bytes`.
    pub(crate) kind: Kind,
    /// Its length in bytes.
    pub(crate) len: usize,
    /// The lane's slot count at which it starts (see `sys::lane`).
    pub(crate) first: u32,
}

/// Length of a [`Kind::Lane`] frame's payload: kind, length, first slot.
const LANE_PAYLOAD: usize = 1 + 8 + 4;

/// Sends the frame that announces `message`, coming through a lane; `fds`
/// are the message's descriptors, then the lane's.
pub(crate) fn send_lane_frame(
    sock: BorrowedFd<'_>,
    message: LaneMessage,
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let len = message.len as u64;
    if len > MAX_FRAME_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("message of {len} bytes is over the {MAX_FRAME_LEN}-byte limit"),
        ));
    }
    let mut frame = [0u8; HEADER_LEN + LANE_PAYLOAD];
    frame[..HEADER_LEN].copy_from_slice(&header(Kind::Lane, fds.len() as u16, LANE_PAYLOAD as u64));
    frame[HEADER_LEN] = message.kind as u8;
    frame[HEADER_LEN + 1..HEADER_LEN + 9].copy_from_slice(&len.to_le_bytes());
    frame[HEADER_LEN + 9..].copy_from_slice(&message.first.to_le_bytes());
    send_all(sock, &frame, fds)
}

/// What a [`Kind::Lane`] frame announces.
pub(crate) fn parse_lane_frame(payload: &[u8]) -> Result<LaneMessage, RecvError> {
    let Ok(payload) = <[u8; LANE_PAYLOAD]>::try_from(payload) else {
        return Err(RecvError::BadLane(format!(
            "{}-byte payload",
            payload.len()
        )));
    };
    let kind = match Kind::from_u8(payload[0]) {
        Some(kind @ (Kind::Data | Kind::Bytes)) => kind,
        _ => return Err(RecvError::BadLane(format!("message kind {}", payload[0]))),
    };
    let mut len = [0u8; 8];
    len.copy_from_slice(&payload[1..9]);
    let len = u64::from_le_bytes(len);
    if len > MAX_FRAME_LEN {
        return Err(RecvError::TooLarge(len));
    }
    let mut first = [0u8; 4];
    first.copy_from_slice(&payload[9..]);
    Ok(LaneMessage {
        kind,
        len: len as usize,
        first: u32::from_le_bytes(first),
    })
}

/// Writes all of `bytes`, the descriptors going with the first chunk.
pub(crate) fn send_all(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let mut sent = 0;
    if !fds.is_empty() {
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(io::Error::other("too many descriptors for one message"));
        }
        loop {
            match rustix::net::sendmsg(
                sock,
                &[IoSlice::new(bytes)],
                &mut control,
                SendFlags::NOSIGNAL,
            ) {
                Ok(n) => {
                    sent = n;
                    break;
                }
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
    while sent < bytes.len() {
        match rustix::net::send(sock, &bytes[sent..], SendFlags::NOSIGNAL) {
            Ok(n) => sent += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Why a frame could not be received.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecvError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("connection closed in the middle of a frame ({got} of {want} bytes)")]
    Truncated { got: usize, want: usize },
    #[error("not a multiproc frame (bad magic {0:02x?})")]
    BadMagic([u8; 4]),
    #[error("unsupported protocol version {0} (this build speaks {VERSION})")]
    BadVersion(u8),
    #[error("unknown frame kind {0}")]
    BadKind(u8),
    #[error("frame announces {0} bytes, over the {MAX_FRAME_LEN}-byte limit")]
    TooLarge(u64),
    #[error("frame announces {want} descriptors but {got} arrived")]
    FdMismatch { want: usize, got: usize },
    #[error("malformed large-message frame ({0})")]
    BadLane(String),
    /// The other process went away in the middle of a message.
    #[error("{0}")]
    PeerLost(&'static str),
}

impl RecvError {
    /// Turns a receive failure into the crate's error.
    pub(crate) fn into_error(self) -> Error {
        match self {
            RecvError::Io(e) => Error::io("receiving a frame", e),
            RecvError::PeerLost(why) => Error::new(ErrorKind::Disconnected, why),
            other => Error::new(ErrorKind::Decode, other.to_string()),
        }
    }
}

/// A received frame; the payload is in the buffer passed to [`recv_frame`].
#[derive(Debug)]
pub(crate) struct InFrame {
    pub(crate) kind: Kind,
    pub(crate) fds: Vec<OwnedFd>,
}

/// Receives one frame into `buf` (cleared first). `Ok(None)` is a clean end
/// of stream before any byte of a frame.
pub(crate) fn recv_frame(
    sock: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
) -> Result<Option<InFrame>, RecvError> {
    let mut head = [0u8; HEADER_LEN];
    let mut fds = Vec::new();
    let mut got = 0;
    while got < HEADER_LEN {
        let n = recv_with_fds(sock, &mut head[got..], &mut fds, RecvFlags::empty())?;
        if n == 0 {
            if got == 0 && fds.is_empty() {
                return Ok(None);
            }
            return Err(RecvError::Truncated {
                got,
                want: HEADER_LEN,
            });
        }
        got += n;
    }
    let (kind, nfds, len) = parse_header(&head)?;
    if fds.len() != nfds {
        return Err(RecvError::FdMismatch {
            want: nfds,
            got: fds.len(),
        });
    }
    buf.clear();
    read_rest(sock, buf, len, None)?;
    Ok(Some(InFrame { kind, fds }))
}

/// Checks a header; returns the frame's kind, descriptor count and length.
fn parse_header(head: &[u8; HEADER_LEN]) -> Result<(Kind, usize, usize), RecvError> {
    let magic: [u8; 4] = [head[0], head[1], head[2], head[3]];
    if magic != MAGIC {
        return Err(RecvError::BadMagic(magic));
    }
    if head[4] != VERSION {
        return Err(RecvError::BadVersion(head[4]));
    }
    let kind = Kind::from_u8(head[5]).ok_or(RecvError::BadKind(head[5]))?;
    let nfds = u16::from_le_bytes([head[6], head[7]]) as usize;
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&head[8..16]);
    let len = u64::from_le_bytes(len_bytes);
    if len > MAX_FRAME_LEN {
        return Err(RecvError::TooLarge(len));
    }
    Ok((kind, nfds, len as usize))
}

/// Asked, when the rest of a half-received frame is slow to come, whether
/// its sender died. Another process may hold the sending end too, so the
/// stream need not end when the sender does; `None` for streams with a
/// single sending process, whose death ends the stream.
pub(crate) type SenderDied<'a> = Option<&'a dyn Fn() -> bool>;

/// Appends bytes from `sock` to `buf` until it holds `len` bytes.
///
/// The buffer grows as bytes arrive (at most doubling), so a header that
/// announces far more than is ever sent costs no more memory than was sent.
fn read_rest(
    sock: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
    len: usize,
    died: SenderDied<'_>,
) -> Result<(), RecvError> {
    while buf.len() < len {
        let filled = buf.len();
        let chunk = (len - filled).min(filled.max(1 << 16));
        let n = match died {
            None => crate::sys::recv_append(sock, buf, chunk, RecvFlags::empty()),
            Some(died) => loop {
                match crate::sys::recv_append(sock, buf, chunk, RecvFlags::DONTWAIT) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => await_more(sock, died)?,
                    other => break other,
                }
            },
        }
        .map_err(RecvError::Io)?;
        if n == 0 {
            return Err(RecvError::Truncated {
                got: HEADER_LEN + filled,
                want: HEADER_LEN + len,
            });
        }
    }
    Ok(())
}

/// Waits for more bytes of a half-received frame, asking `died` after each
/// [`CHECK_PERIOD`] without any.
#[cold]
fn await_more(sock: BorrowedFd<'_>, died: &dyn Fn() -> bool) -> Result<(), RecvError> {
    loop {
        let mut fds = [PollFd::new(&sock, PollFlags::IN)];
        if crate::sys::poll::poll(&mut fds, Some(CHECK_PERIOD)).map_err(RecvError::Io)? > 0 {
            return Ok(());
        }
        if died() {
            return Err(RecvError::PeerLost(
                "the sending process died in the middle of a message",
            ));
        }
    }
}

/// A frame from a [`FrameReader`], and where its payload is: in the
/// read-ahead buffer at the range given, or (`None`) in the caller's buffer.
pub(crate) type Located = (InFrame, Option<Range<usize>>);

/// How much a [`FrameReader`] reads ahead.
const READ_AHEAD: usize = 64 << 10;

/// Receives frames from a stream it reads ahead of, so that a small message
/// costs one `recvmsg` rather than one for its header and one for its body.
///
/// Descriptors arrive with the first byte of the frame that carries them (a
/// `recvmsg` never returns those of two different sends); they wait in
/// order until their frame's header claims them.
#[derive(Debug, Default)]
pub(crate) struct FrameReader {
    ahead: Vec<u8>,
    start: usize,
    end: usize,
    fds: std::collections::VecDeque<OwnedFd>,
}

impl FrameReader {
    /// Whether bytes or descriptors were read ahead and wait for a `recv`.
    pub(crate) fn has_buffered(&self) -> bool {
        self.end > self.start || !self.fds.is_empty()
    }

    /// Receives one frame. Its payload stays where it is when it was read
    /// ahead whole, and the range returned locates it (for [`bytes`](Self::bytes),
    /// until the next `recv`); otherwise it is in `out` (cleared first).
    /// `Ok(None)` is a clean end of stream between frames.
    pub(crate) fn recv(
        &mut self,
        sock: BorrowedFd<'_>,
        out: &mut Vec<u8>,
        died: SenderDied<'_>,
    ) -> Result<Option<Located>, RecvError> {
        if self.ahead.is_empty() {
            self.ahead = vec![0; READ_AHEAD];
        }
        while self.end - self.start < HEADER_LEN {
            if self.end == self.ahead.len() {
                self.ahead.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            // With half a header here, the rest should follow at once: if
            // it does not, ask whether its sender died while waiting.
            let stall = died.filter(|_| self.end > self.start);
            let flags = match stall {
                Some(_) => RecvFlags::DONTWAIT,
                None => RecvFlags::empty(),
            };
            let n = loop {
                let got = recv_with_fds(sock, &mut self.ahead[self.end..], &mut self.fds, flags);
                match (got, stall) {
                    (Err(RecvError::Io(e)), Some(died))
                        if e.kind() == io::ErrorKind::WouldBlock =>
                    {
                        await_more(sock, died)?
                    }
                    (got, _) => break got?,
                }
            };
            if n == 0 {
                let got = self.end - self.start;
                if got == 0 && self.fds.is_empty() {
                    return Ok(None);
                }
                return Err(RecvError::Truncated {
                    got,
                    want: HEADER_LEN,
                });
            }
            self.end += n;
        }
        let mut head = [0u8; HEADER_LEN];
        head.copy_from_slice(&self.ahead[self.start..self.start + HEADER_LEN]);
        let (kind, nfds, len) = parse_header(&head)?;
        if self.fds.len() < nfds {
            return Err(RecvError::FdMismatch {
                want: nfds,
                got: self.fds.len(),
            });
        }
        self.start += HEADER_LEN;
        let fds: Vec<OwnedFd> = if nfds == 0 {
            Vec::new()
        } else {
            self.fds.drain(..nfds).collect()
        };
        let frame = InFrame { kind, fds };
        if self.end - self.start >= len {
            let at = self.start..self.start + len;
            self.start += len;
            if self.start == self.end {
                // Bytes stay put until the next read; only the marks move.
                self.start = 0;
                self.end = 0;
            }
            return Ok(Some((frame, Some(at))));
        }
        let buffered = self.end - self.start;
        out.clear();
        out.extend_from_slice(&self.ahead[self.start..self.start + buffered]);
        self.start += buffered;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        read_rest(sock, out, len, died)?;
        Ok(Some((frame, None)))
    }

    /// Read-ahead bytes, as located by [`recv`](Self::recv).
    pub(crate) fn bytes(&self, at: Range<usize>) -> &[u8] {
        &self.ahead[at]
    }
}

fn recv_with_fds(
    sock: BorrowedFd<'_>,
    into: &mut [u8],
    fds: &mut impl Extend<OwnedFd>,
    flags: RecvFlags,
) -> Result<usize, RecvError> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = loop {
        match rustix::net::recvmsg(
            sock,
            &mut [IoSliceMut::new(into)],
            &mut control,
            flags | RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(msg) => break msg,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(RecvError::Io(e.into())),
        }
    };
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    Ok(msg.bytes)
}

/// Decodes a received payload, handing `fds` to the handles inside it.
/// Descriptors no handle claimed are closed.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], fds: Vec<OwnedFd>) -> Result<T, Error> {
    decoding(fds, || codec::decode(bytes)).0
}

/// Like [`decode`], for a value at the start of `bytes`; returns the bytes used.
pub(crate) fn decode_prefix<T: DeserializeOwned>(
    bytes: &[u8],
    fds: Vec<OwnedFd>,
) -> (Result<(T, usize), Error>, Vec<OwnedFd>) {
    let (result, rest) = decoding(fds, || codec::decode_prefix(bytes));
    (result, rest.into_iter().flatten().collect())
}

/// An encode's collected descriptors and a decode's offered ones.
type Tables = (Vec<OwnedFd>, Vec<Option<OwnedFd>>);

/// What the codec is doing on this thread, for the handles it meets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Idle,
    Encoding,
    Decoding,
}

thread_local! {
    static MODE: Cell<Mode> = const { Cell::new(Mode::Idle) };
    /// The descriptors of the handles met by the encode in progress.
    /// Empty whenever `MODE` is `Idle`.
    static OUT_FDS: RefCell<Vec<OwnedFd>> = const { RefCell::new(Vec::new()) };
    /// The descriptors that came with the payload being decoded, each taken
    /// by the handle that names it. Empty whenever `MODE` is `Idle`.
    static IN_FDS: RefCell<Vec<Option<OwnedFd>>> = const { RefCell::new(Vec::new()) };
    /// The descriptors of the encodes and decodes that nested ones interrupted.
    static OUTER: RefCell<Vec<Tables>> = const { RefCell::new(Vec::new()) };
    /// Why the last handle failed to (de)serialize: some formats replace a
    /// serializer's custom message with a generic one, so the codec asks here.
    static HANDLE_ERROR: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Records why a handle failed to (de)serialize and returns the message,
/// for `serde::{de,ser}::Error::custom`.
pub(crate) fn handle_error(message: String) -> String {
    HANDLE_ERROR.with(|e| *e.borrow_mut() = Some(message.clone()));
    message
}

/// The message of a handle that failed during the current encode or decode.
pub(crate) fn take_handle_error() -> Option<String> {
    HANDLE_ERROR.with(|e| e.borrow_mut().take())
}

/// One encode or decode in progress on this thread. Ending it (by drop,
/// so a panicking `Serialize` or `Deserialize` ends it too) restores the
/// mode before it and, for a nested one, the outer one's descriptors.
struct Scope {
    previous: Mode,
}

impl Scope {
    #[inline]
    fn enter(mode: Mode) -> Scope {
        let previous = MODE.replace(mode);
        if previous != Mode::Idle {
            Scope::set_outer_aside();
        }
        Scope { previous }
    }

    /// Inside another encode or decode (a handle's own serializer encoding
    /// something): the outer one's descriptors wait aside.
    #[cold]
    fn set_outer_aside() {
        let outer = (OUT_FDS.take(), IN_FDS.take());
        OUTER.with_borrow_mut(|stack| stack.push(outer));
    }

    #[cold]
    fn restore_outer() {
        if let Some((outer_out, outer_in)) = OUTER.with_borrow_mut(Vec::pop) {
            OUT_FDS.set(outer_out);
            IN_FDS.set(outer_in);
        }
    }

    /// Normally the scope's user took its descriptors already; after a
    /// panic, what is left is dropped, so `Idle` finds the tables empty.
    #[cold]
    fn clear_after_panic() {
        OUT_FDS.take();
        IN_FDS.take();
    }

    fn nested(&self) -> bool {
        self.previous != Mode::Idle
    }
}

impl Drop for Scope {
    #[inline]
    fn drop(&mut self) {
        if self.nested() {
            Scope::restore_outer();
        } else if std::thread::panicking() {
            Scope::clear_after_panic();
        }
        MODE.set(self.previous);
    }
}

/// Runs an encode; returns its result and the descriptors its handles gave.
fn encoding<R>(f: impl FnOnce() -> R) -> (R, Vec<OwnedFd>) {
    let _scope = Scope::enter(Mode::Encoding);
    let result = f();
    (result, OUT_FDS.take())
}

/// Runs a decode with `fds` on offer; returns its result and the
/// descriptors no handle took.
fn decoding<R>(fds: Vec<OwnedFd>, f: impl FnOnce() -> R) -> (R, Vec<Option<OwnedFd>>) {
    let scope = Scope::enter(Mode::Decoding);
    let offered = !fds.is_empty();
    if offered {
        IN_FDS.set(fds.into_iter().map(Some).collect());
    }
    let result = f();
    // With nothing offered, nothing is there to take back.
    let rest = if offered || scope.nested() {
        IN_FDS.take()
    } else {
        Vec::new()
    };
    (result, rest)
}

/// Used by handles' `Serialize`: moves a duplicate of `fd` into the frame
/// being encoded and returns its index.
pub(crate) fn push_fd(fd: BorrowedFd<'_>) -> Result<u32, String> {
    if MODE.get() != Mode::Encoding {
        return Err(handle_error(NOT_ON_WIRE.to_string()));
    }
    let dup = rustix::io::fcntl_dupfd_cloexec(fd, 3)
        .map_err(|e| handle_error(format!("could not duplicate a handle's descriptor: {e}")))?;
    Ok(OUT_FDS.with_borrow_mut(|fds| {
        fds.push(dup);
        (fds.len() - 1) as u32
    }))
}

/// Used by handles' `Deserialize`: takes the descriptor at `index` out of the
/// frame being decoded.
pub(crate) fn take_fd(index: u32) -> Result<OwnedFd, String> {
    if MODE.get() != Mode::Decoding {
        return Err(handle_error(NOT_ON_WIRE.to_string()));
    }
    IN_FDS
        .with_borrow_mut(|fds| fds.get_mut(index as usize).and_then(Option::take))
        .ok_or_else(|| {
            handle_error(format!(
                "message refers to handle #{index}, which it did not carry"
            ))
        })
}

const NOT_ON_WIRE: &str = "multiproc handles can only be (de)serialized by multiproc itself \
     (as an entry argument or result, or in a message on a multiproc channel)";

/// Writes `payload` into a new memfd.
pub(crate) fn spill(payload: &[u8]) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create("multiproc-message", rustix::fs::MemfdFlags::CLOEXEC)?;
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

/// Reads back what [`spill`] wrote: exactly `len` bytes, checked against
/// the memfd's size before anything is allocated.
pub(crate) fn read_spill(fd: &OwnedFd, len: u64) -> io::Result<Vec<u8>> {
    let size = rustix::fs::fstat(fd)?.st_size;
    if u64::try_from(size).ok() != Some(len) || len > MAX_FRAME_LEN {
        return Err(io::Error::other(format!(
            "spilled message of {len} bytes in a memfd of {size}"
        )));
    }
    let len = len as usize;
    let mut bytes = Vec::with_capacity(len);
    while bytes.len() < len {
        let done = bytes.len();
        let n = crate::sys::pread_append(fd.as_fd(), &mut bytes, len - done, done as u64)?;
        if n == 0 {
            return Err(io::Error::other("spilled message is short"));
        }
    }
    Ok(bytes)
}

impl Default for OutFrame {
    fn default() -> OutFrame {
        OutFrame::new()
    }
}

/// Builds the bytes of a frame with an arbitrary header. Not public API: for
/// tests that feed malformed frames to a child.
#[doc(hidden)]
pub fn encode_frame_for_tests(kind: u8, announced_len: u64, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
    bytes.extend_from_slice(&MAGIC);
    bytes.push(VERSION);
    bytes.push(kind);
    bytes.extend_from_slice(&0u16.to_le_bytes());
    bytes.extend_from_slice(&announced_len.to_le_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::net::{AddressFamily, SocketFlags, SocketType};

    fn pair() -> (OwnedFd, OwnedFd) {
        rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap()
    }

    fn feed(bytes: &[u8]) -> Result<Option<InFrame>, RecvError> {
        let (a, b) = pair();
        send_all(a.as_fd(), bytes, &[]).unwrap();
        drop(a);
        let mut buf = Vec::new();
        recv_frame(b.as_fd(), &mut buf)
    }

    #[test]
    fn frame_round_trips_with_descriptors() {
        let (a, b) = pair();
        let (pr, pw) = rustix::pipe::pipe().unwrap();
        let mut out = OutFrame::new();
        out.encode(&(String::from("hi"), crate::Fd::from(pw)))
            .unwrap();
        out.send(a.as_fd(), Kind::Value).unwrap();
        let mut buf = Vec::new();
        let frame = recv_frame(b.as_fd(), &mut buf).unwrap().unwrap();
        assert_eq!(frame.kind, Kind::Value);
        assert_eq!(frame.fds.len(), 1);
        let (text, fd): (String, crate::Fd) = decode(&buf, frame.fds).unwrap();
        assert_eq!(text, "hi");
        rustix::io::write(&fd, b"x").unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(rustix::io::read(&pr, &mut byte).unwrap(), 1);
    }

    #[test]
    fn clean_end_of_stream_is_none() {
        assert!(matches!(feed(&[]), Ok(None)));
    }

    #[test]
    fn garbage_is_bad_magic() {
        assert!(matches!(
            feed(b"GARBAGE!GARBAGE!"),
            Err(RecvError::BadMagic(_))
        ));
    }

    #[test]
    fn short_header_is_truncated() {
        let bytes = encode_frame_for_tests(2, 10, &[]);
        assert!(matches!(
            feed(&bytes[..7]),
            Err(RecvError::Truncated { got: 7, .. })
        ));
    }

    #[test]
    fn short_payload_is_truncated() {
        let bytes = encode_frame_for_tests(2, 10, &[1, 2, 3]);
        assert!(matches!(feed(&bytes), Err(RecvError::Truncated { .. })));
    }

    #[test]
    fn oversized_frame_is_rejected_from_its_header() {
        let bytes = encode_frame_for_tests(2, 1 << 40, &[]);
        assert!(matches!(feed(&bytes), Err(RecvError::TooLarge(n)) if n == 1 << 40));
    }

    #[test]
    fn unknown_version_and_kind_are_rejected() {
        let mut bytes = encode_frame_for_tests(2, 0, &[]);
        bytes[4] = 99;
        assert!(matches!(feed(&bytes), Err(RecvError::BadVersion(99))));
        let bytes = encode_frame_for_tests(77, 0, &[]);
        assert!(matches!(feed(&bytes), Err(RecvError::BadKind(77))));
    }

    #[test]
    fn announced_descriptors_must_arrive() {
        let mut bytes = encode_frame_for_tests(2, 0, &[]);
        bytes[6] = 3;
        assert!(matches!(
            feed(&bytes),
            Err(RecvError::FdMismatch { want: 3, got: 0 })
        ));
    }

    #[test]
    fn serializing_a_handle_outside_the_wire_is_an_error() {
        let (_r, w) = rustix::pipe::pipe().unwrap();
        let fd = crate::Fd::from(w);
        let mut buf = Vec::new();
        let err = crate::codec::encode_into(&fd, &mut buf).unwrap_err();
        assert!(
            err.to_string()
                .contains("only be (de)serialized by multiproc"),
            "{err}"
        );
    }

    #[test]
    fn a_panicking_serializer_leaves_the_thread_outside_any_encode() {
        struct Panics;
        impl serde::Serialize for Panics {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                panic!("a user's Serialize panicked");
            }
        }
        let (_r, w) = rustix::pipe::pipe().unwrap();
        let fd = crate::Fd::from(w);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // A handle first, so the encode holds a descriptor when it panics.
            OutFrame::new().encode(&(&fd, Panics))
        }));
        assert!(caught.is_err());
        assert_eq!(MODE.get(), Mode::Idle);
        assert!(OUT_FDS.with_borrow(Vec::is_empty));
        // So a handle serialized outside the wire is refused again.
        let err = crate::codec::encode_into(&fd, &mut Vec::new()).unwrap_err();
        assert!(
            err.to_string()
                .contains("only be (de)serialized by multiproc")
        );
    }

    #[test]
    fn an_encode_nested_in_another_keeps_each_ones_descriptors() {
        // A value whose serializer encodes a handle of its own on the side.
        struct EncodesInside<'a>(&'a crate::Fd);
        impl serde::Serialize for EncodesInside<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut inner = OutFrame::new();
                inner.encode(self.0).unwrap();
                assert_eq!(inner.fds().len(), 1);
                s.serialize_u8(0)
            }
        }
        let (_r, w) = rustix::pipe::pipe().unwrap();
        let fd = crate::Fd::from(w);
        let mut outer = OutFrame::new();
        outer.encode(&(&fd, EncodesInside(&fd), &fd)).unwrap();
        assert_eq!(outer.fds().len(), 2);
        assert_eq!(MODE.get(), Mode::Idle);
    }

    #[test]
    fn handle_index_that_was_not_sent_is_a_decode_error() {
        let mut buf = Vec::new();
        crate::codec::encode_into(&5u32, &mut buf).unwrap();
        let err = decode::<crate::Fd>(&buf, Vec::new()).unwrap_err();
        assert!(err.is_decode(), "{err}");
    }
}
