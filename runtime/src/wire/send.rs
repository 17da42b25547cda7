//! Sending frames: built in an [`OutFrame`] (encoded in place, handles'
//! descriptors collected), or raw bytes behind a header, in as few
//! `sendmsg` calls as the socket allows.

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use serde::Serialize;

use super::codec;
use super::frame::{FRAME_HEADER_LEN, FrameKind, MAX_HANDLES, check_len, header};
use super::handles::{codec_error, encoding};
use super::spill::spill;
use crate::error::{Error, ErrorKind};

/// A frame being built: header space first, then the payload.
#[derive(Debug)]
pub(crate) struct OutFrame {
    buf: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl OutFrame {
    pub(crate) fn new() -> OutFrame {
        OutFrame {
            buf: vec![0; FRAME_HEADER_LEN],
            fds: Vec::new(),
        }
    }

    /// The encoded payload (after the header space).
    pub(crate) fn payload(&self) -> &[u8] {
        &self.buf[FRAME_HEADER_LEN..]
    }

    /// The descriptors collected while encoding.
    pub(crate) fn fds(&self) -> &[OwnedFd] {
        &self.fds
    }

    /// Moves the payload into a new memfd, which becomes the first
    /// descriptor, and leaves the payload's length (8 bytes) in its place:
    /// sending the frame then never waits for the reader.
    pub(crate) fn spill(&mut self) -> io::Result<()> {
        let memfd = spill(&self.buf[FRAME_HEADER_LEN..])?;
        let len = (self.buf.len() - FRAME_HEADER_LEN) as u64;
        self.buf.truncate(FRAME_HEADER_LEN);
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.fds.insert(0, memfd);
        Ok(())
    }

    /// Appends `bytes` to the payload as they are (a raw-bytes message,
    /// not an encoding).
    pub(crate) fn push_raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Writes the header of a frame of `kind` in front of the payload, so
    /// that [`bytes`](Self::bytes) is the whole frame; fails for a payload
    /// over the limit.
    pub(crate) fn seal(&mut self, kind: FrameKind) -> io::Result<()> {
        let len = (self.buf.len() - FRAME_HEADER_LEN) as u64;
        check_len(len)?;
        let header = header(kind, self.fds.len() as u16, len);
        self.buf[..FRAME_HEADER_LEN].copy_from_slice(&header);
        Ok(())
    }

    /// The whole frame, header and payload (once [`seal`](Self::seal)ed).
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Closes this frame's copies of the descriptors (once they are sent:
    /// the receiver has its own).
    pub(crate) fn drop_fds(&mut self) {
        self.fds.clear();
    }

    /// Empties the frame for reuse, keeping its buffer.
    pub(crate) fn clear(&mut self) {
        self.buf.truncate(FRAME_HEADER_LEN);
        self.fds.clear();
    }

    /// Empties the frame for reuse, keeping at most `keep` bytes of room
    /// for a payload (a frame kept for reuse keeps no large buffer).
    pub(crate) fn clear_keeping(&mut self, keep: usize) {
        self.clear();
        self.buf.shrink_to(FRAME_HEADER_LEN + keep);
    }

    /// Appends the encoding of `value`, collecting the descriptors of any
    /// handles inside it.
    pub(crate) fn encode<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let (result, fds, undo) = encoding(|| codec::encode_into(value, &mut self.buf));
        if let Err(e) = result {
            undo.run();
            return Err(codec_error(ErrorKind::Encode, e));
        }
        self.fds.extend(fds);
        if self.fds.len() > MAX_HANDLES {
            undo.run();
            return Err(Error::new(
                ErrorKind::Encode,
                // Counted in descriptors, not handles: a handle may hold
                // several (a Queue three), so a user counting handles
                // would not recognise the number.
                format!(
                    "too many handles in one message (max {MAX_HANDLES}): the limit counts \
                     descriptors, and its handles hold {} (an Fd or a Lock holds one, a \
                     Queue three); send them in several messages",
                    self.fds.len()
                ),
            ));
        }
        Ok(())
    }

    /// Sends the frame; blocks until all of it is written.
    pub(crate) fn send(&mut self, sock: BorrowedFd<'_>, kind: FrameKind) -> io::Result<()> {
        let len = (self.buf.len() - FRAME_HEADER_LEN) as u64;
        check_len(len)?;
        let header = header(kind, self.fds.len() as u16, len);
        self.buf[..FRAME_HEADER_LEN].copy_from_slice(&header);
        let borrowed: Vec<BorrowedFd<'_>> = self.fds.iter().map(|fd| fd.as_fd()).collect();
        let result = send_all(sock, &self.buf, &borrowed);
        // Our copies must not outlive the send: a kept copy of a
        // connection's end would stop its peer from ever seeing it gone.
        self.fds.clear();
        result
    }
}

impl Default for OutFrame {
    fn default() -> OutFrame {
        OutFrame::new()
    }
}

/// Sends a frame whose payload is `payload` as is, without copying it into
/// a frame buffer first (header and payload go out in one `sendmsg`).
pub(crate) fn send_raw_frame(
    sock: BorrowedFd<'_>,
    kind: FrameKind,
    payload: &[u8],
) -> io::Result<()> {
    let len = payload.len() as u64;
    check_len(len)?;
    let head = header(kind, 0, len);
    let mut sent = 0;
    let total = FRAME_HEADER_LEN + payload.len();
    while sent < total {
        let n = if sent < FRAME_HEADER_LEN {
            let iov = [IoSlice::new(&head[sent..]), IoSlice::new(payload)];
            let mut no_fds = SendAncillaryBuffer::new(&mut []);
            rustix::net::sendmsg(sock, &iov, &mut no_fds, SendFlags::NOSIGNAL)
        } else {
            rustix::net::send(
                sock,
                &payload[sent - FRAME_HEADER_LEN..],
                SendFlags::NOSIGNAL,
            )
        };
        match n {
            Ok(n) => sent += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Writes all of `bytes`, the descriptors going with the first chunk.
pub(crate) fn send_all(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    send_from(sock, bytes, fds, SendFlags::NOSIGNAL).map(drop)
}

/// Writes what of `bytes` the socket takes now, never waiting, the
/// descriptors going with the first chunk: how many bytes went (0: none,
/// and then the descriptors did not go either).
pub(crate) fn send_now(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    send_from(sock, bytes, fds, SendFlags::NOSIGNAL | SendFlags::DONTWAIT)
}

/// Writes `bytes`, the descriptors going with the first chunk, until all
/// of it is written or (with `DONTWAIT` in `flags`) until the socket would
/// block: returns how many bytes went.
fn send_from(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
    flags: SendFlags,
) -> io::Result<usize> {
    let stop_when_full = flags.contains(SendFlags::DONTWAIT);
    let mut sent = 0;
    if !fds.is_empty() {
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(io::Error::other("too many descriptors for one message"));
        }
        loop {
            match rustix::net::sendmsg(sock, &[IoSlice::new(bytes)], &mut control, flags) {
                Ok(n) => {
                    sent = n;
                    break;
                }
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::AGAIN) if stop_when_full => return Ok(0),
                Err(e) => return Err(e.into()),
            }
        }
    }
    while sent < bytes.len() {
        match rustix::net::send(sock, &bytes[sent..], flags) {
            Ok(n) => sent += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) if stop_when_full => break,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(sent)
}
