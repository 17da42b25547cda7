//! Receiving frames: one at a time ([`recv_frame`], for the control
//! socket) or read ahead ([`FrameReader`], for connections), with the
//! descriptors that ride beside them.

use std::collections::VecDeque;
use std::io::{self, IoSliceMut};
use std::mem::MaybeUninit;
use std::ops::Range;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

use super::frame::{FRAME_HEADER_LEN, FrameError, FrameKind, MAX_FDS, parse_header};
use crate::sys::futex::CHECK_PERIOD;

/// A received frame; the payload is in the buffer passed to [`recv_frame`].
#[derive(Debug)]
pub(crate) struct InFrame {
    pub(crate) kind: FrameKind,
    pub(crate) fds: Vec<OwnedFd>,
}

/// Receives one frame into `buf` (cleared first). `Ok(None)` is a clean end
/// of stream before any byte of a frame.
pub(crate) fn recv_frame(
    sock: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
) -> Result<Option<InFrame>, FrameError> {
    let mut head = [0u8; FRAME_HEADER_LEN];
    let mut fds = Vec::new();
    let mut got = 0;
    while got < FRAME_HEADER_LEN {
        let n = recv_with_fds(sock, &mut head[got..], &mut fds, RecvFlags::empty())?;
        if n == 0 {
            if got == 0 && fds.is_empty() {
                return Ok(None);
            }
            return Err(FrameError::Truncated {
                got,
                want: FRAME_HEADER_LEN,
            });
        }
        got += n;
    }
    let (kind, nfds, len) = parse_header(&head)?;
    if fds.len() != nfds {
        return Err(FrameError::FdMismatch {
            want: nfds,
            got: fds.len(),
        });
    }
    buf.clear();
    read_rest(sock, buf, len, None, None)?;
    Ok(Some(InFrame { kind, fds }))
}

/// Asked, when the rest of a half-received frame is slow to come, whether
/// its sender died. Another process may hold the sending end too, so the
/// stream need not end when the sender does; `None` for streams with a
/// single sending process, whose death ends the stream.
pub(crate) type DeathCheck<'a> = Option<&'a dyn Fn() -> bool>;

/// Appends bytes from `sock` to `buf` until it holds `len` bytes, or until
/// `deadline` passes ([`FrameError::TimedOut`], with what came so far kept
/// in `buf`).
///
/// The buffer grows as bytes arrive (at most doubling), so a header that
/// announces far more than is ever sent costs no more memory than was sent.
fn read_rest(
    sock: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
    len: usize,
    died: DeathCheck<'_>,
    deadline: Option<Instant>,
) -> Result<(), FrameError> {
    while buf.len() < len {
        let filled = buf.len();
        let chunk = (len - filled).min(filled.max(1 << 16));
        let n = if died.is_none() && deadline.is_none() {
            crate::sys::recv_append(sock, buf, chunk, RecvFlags::empty())
        } else {
            loop {
                match crate::sys::recv_append(sock, buf, chunk, RecvFlags::DONTWAIT) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        await_more(sock, died, deadline)?
                    }
                    other => break other,
                }
            }
        }
        .map_err(FrameError::Io)?;
        if n == 0 {
            return Err(FrameError::Truncated {
                got: FRAME_HEADER_LEN + filled,
                want: FRAME_HEADER_LEN + len,
            });
        }
    }
    Ok(())
}

/// Waits for more bytes of a half-received frame, asking `died` (if any)
/// after each [`CHECK_PERIOD`] without any, until `deadline` (if any).
#[cold]
fn await_more(
    sock: BorrowedFd<'_>,
    died: DeathCheck<'_>,
    deadline: Option<Instant>,
) -> Result<(), FrameError> {
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left == Some(Duration::ZERO) {
            return Err(FrameError::TimedOut);
        }
        let period = left.map_or(CHECK_PERIOD, |left| left.min(CHECK_PERIOD));
        let mut fds = [PollFd::new(&sock, PollFlags::IN)];
        if crate::sys::poll::poll(&mut fds, Some(period)).map_err(FrameError::Io)? > 0 {
            return Ok(());
        }
        if died.is_some_and(|died| died()) {
            // What it sent before it died is in the socket by now: look
            // once more, or a frame it finished between the poll above
            // and its death would be reported lost.
            let mut fds = [PollFd::new(&sock, PollFlags::IN)];
            if crate::sys::poll::poll(&mut fds, Some(Duration::ZERO)).map_err(FrameError::Io)? > 0 {
                return Ok(());
            }
            return Err(FrameError::PeerLost(
                "the sending process died in the middle of a message",
            ));
        }
    }
}

/// A frame from a [`FrameReader`], and where its payload is: in the
/// read-ahead buffer at the range given, or (`None`) in the caller's buffer.
pub(crate) type ReceivedFrame = (InFrame, Option<Range<usize>>);

/// How much a [`FrameReader`] reads ahead.
const READ_AHEAD: usize = 64 << 10;

/// Receives frames from a stream it reads ahead of, so that a small message
/// costs one `recvmsg` rather than one for its header and one for its body.
///
/// Descriptors arrive with the first byte of the frame that carries them (a
/// `recvmsg` never returns those of two different sends). Each batch waits,
/// with the stream bytes that came with it, until a frame starting among
/// those bytes claims it whole; a batch no frame claims, or one that does
/// not match its frame's count, is closed at once and reported, so a peer
/// cannot slip descriptors to a later message or pile them up here.
#[derive(Debug, Default)]
pub(crate) struct FrameReader {
    ahead: Vec<u8>,
    start: usize,
    end: usize,
    /// Stream bytes received so far (`ahead[end]` is at this offset).
    received: u64,
    batches: VecDeque<Batch>,
    /// A frame whose header was taken and whose payload is partly in the
    /// caller's buffer: a deadline passed before the rest came.
    pending: Option<Pending>,
}

/// See [`FrameReader::pending`].
#[derive(Debug)]
struct Pending {
    kind: FrameKind,
    fds: Vec<OwnedFd>,
    len: usize,
}

/// Descriptors that came with the stream bytes `from..to`.
#[derive(Debug)]
struct Batch {
    from: u64,
    to: u64,
    fds: Vec<OwnedFd>,
}

impl FrameReader {
    /// Whether bytes or descriptors were read ahead and wait for a `recv`.
    pub(crate) fn has_buffered(&self) -> bool {
        self.end > self.start || !self.batches.is_empty() || self.pending.is_some()
    }

    /// Receives one frame. Its payload stays where it is when it was read
    /// ahead whole, and the range returned locates it (for [`bytes`](Self::bytes),
    /// until the next `recv`); otherwise it is in `out` (cleared first).
    /// `Ok(None)` is a clean end of stream between frames.
    ///
    /// With a `deadline`, a frame not whole by then is
    /// [`FrameError::TimedOut`]: what came of it is kept (half a header
    /// here, half a payload in `out`, which the caller must leave alone),
    /// and the next `recv` goes on with it.
    pub(crate) fn recv(
        &mut self,
        sock: BorrowedFd<'_>,
        out: &mut Vec<u8>,
        died: DeathCheck<'_>,
        deadline: Option<Instant>,
    ) -> Result<Option<ReceivedFrame>, FrameError> {
        if self.pending.is_some() {
            return self.resume(sock, out, died, deadline);
        }
        if self.ahead.is_empty() {
            self.ahead = vec![0; READ_AHEAD];
        }
        while self.end - self.start < FRAME_HEADER_LEN {
            if self.end == self.ahead.len() {
                self.ahead.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            // With half a header here, the rest should follow at once: if
            // it does not, ask whether its sender died while waiting. With a
            // deadline, wait no longer than that.
            let stall = died.filter(|_| self.end > self.start);
            let flags = match (stall, deadline) {
                (None, None) => RecvFlags::empty(),
                _ => RecvFlags::DONTWAIT,
            };
            let mut fds = Vec::new();
            let n = loop {
                let got = recv_with_fds(sock, &mut self.ahead[self.end..], &mut fds, flags);
                match got {
                    Err(FrameError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                        await_more(sock, stall, deadline)?
                    }
                    got => break got?,
                }
            };
            if !fds.is_empty() {
                self.batches.push_back(Batch {
                    from: self.received,
                    to: self.received + n as u64,
                    fds,
                });
            }
            if n == 0 {
                let got = self.end - self.start;
                let unclaimed: usize = self.batches.drain(..).map(|b| b.fds.len()).sum();
                if got == 0 && unclaimed == 0 {
                    return Ok(None);
                }
                if got == 0 {
                    return Err(FrameError::Unannounced(unclaimed));
                }
                return Err(FrameError::Truncated {
                    got,
                    want: FRAME_HEADER_LEN,
                });
            }
            self.end += n;
            self.received += n as u64;
        }
        let mut head = [0u8; FRAME_HEADER_LEN];
        head.copy_from_slice(&self.ahead[self.start..self.start + FRAME_HEADER_LEN]);
        let (kind, nfds, len) = parse_header(&head)?;
        let fds = if self.batches.is_empty() && nfds == 0 {
            Vec::new()
        } else {
            self.claim(nfds)?
        };
        self.start += FRAME_HEADER_LEN;
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
        let before = out.len();
        let result = read_rest(sock, out, len, died, deadline);
        self.received += (out.len() - before) as u64;
        match result {
            Ok(()) => Ok(Some((frame, None))),
            Err(FrameError::TimedOut) => {
                self.pending = Some(Pending {
                    kind: frame.kind,
                    fds: frame.fds,
                    len,
                });
                Err(FrameError::TimedOut)
            }
            Err(e) => Err(e),
        }
    }

    /// Goes on with the frame a deadline interrupted, its payload so far in
    /// `out`.
    #[cold]
    fn resume(
        &mut self,
        sock: BorrowedFd<'_>,
        out: &mut Vec<u8>,
        died: DeathCheck<'_>,
        deadline: Option<Instant>,
    ) -> Result<Option<ReceivedFrame>, FrameError> {
        let Some(pending) = self.pending.take() else {
            return Err(FrameError::TimedOut);
        };
        let before = out.len();
        let result = read_rest(sock, out, pending.len, died, deadline);
        self.received += (out.len() - before) as u64;
        match result {
            Ok(()) => Ok(Some((
                InFrame {
                    kind: pending.kind,
                    fds: pending.fds,
                },
                None,
            ))),
            Err(FrameError::TimedOut) => {
                self.pending = Some(pending);
                Err(FrameError::TimedOut)
            }
            Err(e) => Err(e),
        }
    }

    /// The descriptors of the frame whose header is at `ahead[start]`,
    /// which announces `nfds`. Batches that came wholly before the frame
    /// were claimed by none: they are closed, and so is a batch that does
    /// not match; either is an error (the frame itself stays unread).
    #[cold]
    fn claim(&mut self, nfds: usize) -> Result<Vec<OwnedFd>, FrameError> {
        let at = self.received - (self.end - self.start) as u64;
        let mut unclaimed = 0;
        while let Some(batch) = self.batches.front() {
            if batch.to > at {
                break;
            }
            unclaimed += batch.fds.len();
            self.batches.pop_front();
        }
        if unclaimed > 0 {
            return Err(FrameError::Unannounced(unclaimed));
        }
        if nfds == 0 {
            return Ok(Vec::new());
        }
        match self.batches.pop_front() {
            Some(batch) if batch.from <= at && batch.fds.len() == nfds => Ok(batch.fds),
            other => Err(FrameError::FdMismatch {
                want: nfds,
                got: other.map_or(0, |batch| batch.fds.len()),
            }),
        }
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
) -> Result<usize, FrameError> {
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
            Err(e) => return Err(FrameError::Io(e.into())),
        }
    };
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    Ok(msg.bytes)
}
