//! The frame format: a 16-byte header — magic, protocol version, kind,
//! descriptor count, payload length — then the payload. The length is
//! checked against [`MAX_FRAME_LEN`] before anything is allocated.

use std::io;

use crate::error::{Error, ErrorKind};

/// The largest payload a frame may announce.
pub(crate) const MAX_FRAME_LEN: u64 = 1 << 31;
const _: () = assert!(MAX_FRAME_LEN == super::codec::MAX_VALUE_LEN as u64);
/// Most descriptors one frame may carry (the kernel's `SCM_MAX_FD`).
pub(crate) const MAX_FDS: usize = 253;
/// Most handles one message may hold: one descriptor is kept for the
/// transport's own (a spilled payload's memfd, or a pipe's lane).
pub(crate) const MAX_HANDLES: usize = MAX_FDS - 1;
pub(crate) const FRAME_HEADER_LEN: usize = 16;
const MAGIC: [u8; 4] = *b"MPRC";
const VERSION: u8 = 1;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum FrameKind {
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
    /// `LaneMessage` (`pipe/lane.rs`), the message's own kind (`Data` or `Bytes`, one
    /// byte), its length (u64) and the lane slot where it starts (u32).
    Lane = 8,
    /// Parent to its fork server: a `ForkRequest` (`spawn/protocol.rs`).
    ForkRequest = 9,
    /// Fork server to parent: a `ForkReply` (`spawn/protocol.rs`).
    Forked = 10,
}

impl FrameKind {
    /// The kind a header's byte names, if any.
    pub(crate) fn from_u8(byte: u8) -> Option<FrameKind> {
        Some(match byte {
            1 => FrameKind::Call,
            2 => FrameKind::Value,
            3 => FrameKind::Panic,
            4 => FrameKind::Failure,
            5 => FrameKind::Data,
            6 => FrameKind::Bytes,
            7 => FrameKind::SpilledValue,
            8 => FrameKind::Lane,
            9 => FrameKind::ForkRequest,
            10 => FrameKind::Forked,
            _ => return None,
        })
    }
}

/// Builds a frame header.
pub(crate) fn header(kind: FrameKind, nfds: u16, len: u64) -> [u8; FRAME_HEADER_LEN] {
    let mut h = [0u8; FRAME_HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC);
    h[4] = VERSION;
    h[5] = kind as u8;
    h[6..8].copy_from_slice(&nfds.to_le_bytes());
    h[8..16].copy_from_slice(&len.to_le_bytes());
    h
}

/// Fails for a payload over [`MAX_FRAME_LEN`].
pub(crate) fn check_len(len: u64) -> io::Result<()> {
    if len > MAX_FRAME_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("message of {len} bytes is over the {MAX_FRAME_LEN}-byte limit"),
        ));
    }
    Ok(())
}

/// Why a frame could not be received.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
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
    #[error("{0} descriptors arrived that no frame announced (closed)")]
    Unannounced(usize),
    /// A deadline passed before the whole frame came; what came is kept.
    #[error("timed out in the middle of a message")]
    TimedOut,
    #[error("malformed large-message frame ({0})")]
    BadLane(String),
    /// The other process went away in the middle of a message.
    #[error("{0}")]
    PeerLost(&'static str),
}

impl FrameError {
    /// Turns a receive failure into the crate's error.
    pub(crate) fn into_error(self) -> Error {
        match self {
            FrameError::Io(e) => Error::io("receiving a frame", e),
            FrameError::PeerLost(why) => Error::new(ErrorKind::Disconnected, why),
            other => Error::new(ErrorKind::Decode, other.to_string()),
        }
    }
}

/// Checks a header; returns the frame's kind, descriptor count and length.
pub(crate) fn parse_header(
    head: &[u8; FRAME_HEADER_LEN],
) -> Result<(FrameKind, usize, usize), FrameError> {
    let magic: [u8; 4] = [head[0], head[1], head[2], head[3]];
    if magic != MAGIC {
        return Err(FrameError::BadMagic(magic));
    }
    if head[4] != VERSION {
        return Err(FrameError::BadVersion(head[4]));
    }
    let kind = FrameKind::from_u8(head[5]).ok_or(FrameError::BadKind(head[5]))?;
    let nfds = u16::from_le_bytes([head[6], head[7]]) as usize;
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&head[8..16]);
    let len = u64::from_le_bytes(len_bytes);
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge(len));
    }
    Ok((kind, nfds, len as usize))
}

/// Builds the bytes of a frame with an arbitrary header. Not public API: for
/// tests that feed malformed frames to a child.
#[doc(hidden)]
#[cfg(any(test, feature = "test-hooks"))]
pub fn encode_frame_for_tests(kind: u8, announced_len: u64, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    bytes.extend_from_slice(&MAGIC);
    bytes.push(VERSION);
    bytes.push(kind);
    bytes.extend_from_slice(&0u16.to_le_bytes());
    bytes.extend_from_slice(&announced_len.to_le_bytes());
    bytes.extend_from_slice(payload);
    bytes
}
