//! The transport: frames on a Unix socket, with file descriptors riding
//! beside them, and the codec that fills them.
//!
//! A frame is a 16-byte header — magic, protocol version, kind, descriptor
//! count, payload length — followed by the payload. The length is checked
//! against [`MAX_FRAME_LEN`] before anything is allocated. Descriptors travel
//! as `SCM_RIGHTS` on the same `sendmsg` as the header.
//!
//! Handles (such as [`Fd`](crate::Fd)) serialize by moving their descriptor
//! into a side table that only this module installs, around an encode or a
//! decode; the value itself carries only the descriptor's index.

//!
//! - `frame.rs`: the header, its limits and its errors.
//! - `send.rs` / `recv.rs`: moving frames and their descriptors.
//! - `handles.rs`: the descriptor side table handles serialize through.
//! - `spill.rs`: payloads too large for the socket, in a memfd.
//! - `codec.rs`: serde's format (a leaf: it knows nothing of frames).

pub(crate) mod codec;
mod frame;
mod handles;
mod recv;
mod send;
mod spill;

#[cfg(any(test, feature = "test-hooks"))]
pub use frame::encode_frame_for_tests;
pub(crate) use frame::{FRAME_HEADER_LEN, FrameError, FrameKind, MAX_FDS, MAX_FRAME_LEN, header};
pub(crate) use handles::{
    Undo, decode, decode_copy, decode_prefix, decoding_copy, handle_error, in_frame,
    outside_frames, push_fd, take_fd, take_handle_error, undo_if_failed,
};
pub(crate) use recv::{FrameReader, InFrame, ReceivedFrame, recv_frame};
pub(crate) use send::{OutFrame, send_all, send_now, send_raw_frame};
pub(crate) use spill::{read_spill, spill};

#[cfg(test)]
mod tests;
