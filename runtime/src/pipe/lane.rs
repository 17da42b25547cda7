//! The large-message path of a pipe: a message of [`LANE_MIN`] bytes or
//! more is announced by a small frame on the socket, with the sender's
//! lane attached, and its bytes cross through the lane (a ring of slots in
//! shared memory, `sys::slots`) that both processes copy through at once.

use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use rustix::event::PollFlags;
use rustix::net::Shutdown;

use super::{Connection, RecvState, send_error};
use crate::channel_error::RecvTimeoutError;
use crate::error::{Error, ErrorKind};
use crate::sys::slots::{Abandoned, SlotRing};
use crate::wire::{self, FRAME_HEADER_LEN, FrameError, FrameKind, MAX_FRAME_LEN, header};

/// Messages of at least this many bytes go through the sending handle's
/// lane (`sys::slots`), a shared-memory ring that the two processes copy
/// through side by side, rather than through the socket. At 256 KiB a lane
/// is about 3x faster than the socket, and a connection that carries such
/// messages can afford the lane's 4 MiB. (It is faster from 64 KiB up, but
/// every connection carrying such messages would then hold a lane.)
pub(super) const LANE_MIN: usize = 256 << 10;

/// What a [`FrameKind::Lane`] frame announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LaneMessage {
    /// The message's own kind: `Data` or `Bytes`.
    pub(super) kind: FrameKind,
    /// Its length in bytes.
    pub(super) len: usize,
    /// The lane's slot count at which it starts (see `sys::slots`).
    pub(super) first: u32,
}

/// Length of a [`FrameKind::Lane`] frame's payload: kind, length, first slot.
const LANE_PAYLOAD: usize = 1 + 8 + 4;

/// Sends the frame that announces `message`, coming through a lane; `fds`
/// are the message's descriptors, then the lane's.
pub(super) fn send_lane_frame(
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
    let mut frame = [0u8; FRAME_HEADER_LEN + LANE_PAYLOAD];
    frame[..FRAME_HEADER_LEN].copy_from_slice(&header(
        FrameKind::Lane,
        fds.len() as u16,
        LANE_PAYLOAD as u64,
    ));
    frame[FRAME_HEADER_LEN] = message.kind as u8;
    frame[FRAME_HEADER_LEN + 1..FRAME_HEADER_LEN + 9].copy_from_slice(&len.to_le_bytes());
    frame[FRAME_HEADER_LEN + 9..].copy_from_slice(&message.first.to_le_bytes());
    wire::send_all(sock, &frame, fds)
}

/// What a [`FrameKind::Lane`] frame announces.
pub(super) fn parse_lane_frame(payload: &[u8]) -> Result<LaneMessage, FrameError> {
    let Ok(payload) = <[u8; LANE_PAYLOAD]>::try_from(payload) else {
        return Err(FrameError::BadLane(format!(
            "{}-byte payload",
            payload.len()
        )));
    };
    let kind = match FrameKind::from_u8(payload[0]) {
        Some(kind @ (FrameKind::Data | FrameKind::Bytes)) => kind,
        _ => return Err(FrameError::BadLane(format!("message kind {}", payload[0]))),
    };
    let mut len = [0u8; 8];
    len.copy_from_slice(&payload[1..9]);
    let len = u64::from_le_bytes(len);
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge(len));
    }
    let mut first = [0u8; 4];
    first.copy_from_slice(&payload[9..]);
    Ok(LaneMessage {
        kind,
        len: len as usize,
        first: u32::from_le_bytes(first),
    })
}

impl<T> Connection<T> {
    /// Sends a large message through this handle's lane: a frame on the
    /// socket that announces it (with the lane attached), then the bytes
    /// through the lane as the receiver takes them.
    pub(super) fn send_by_lane(
        &self,
        lane: &mut Option<SlotRing>,
        kind: FrameKind,
        payload: &[u8],
        fds: &[OwnedFd],
    ) -> Result<(), Error> {
        let current = match lane {
            Some(current) => current,
            None => {
                lane.insert(SlotRing::create().map_err(|e| Error::io("making a pipe's lane", e))?)
            }
        };
        let _guard = self.lock_sending()?;
        let mut attached: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
        attached.push(current.as_fd());
        let message = LaneMessage {
            kind,
            len: payload.len(),
            first: current.next_slot(),
        };
        send_lane_frame(self.fd.as_fd(), message, &attached).map_err(send_error)?;
        // The receiver holds the socket's reading side only; its hanging up
        // shows as `HUP` (every copy of the other end closed).
        match current.write(payload, || self.socket_says_gone(PollFlags::empty())) {
            Ok(()) => Ok(()),
            Err(why) => {
                // The message's frame is in the stream but its bytes will
                // never all come: close this direction for every process, so
                // that a receiver taking over (another process may hold the
                // receiving end) sees the stream end rather than waiting for
                // them for ever.
                let _ = rustix::net::shutdown(&self.fd, Shutdown::Write);
                *lane = None;
                Err(Error::new(
                    ErrorKind::Disconnected,
                    match why {
                        Abandoned::PeerDied => {
                            "the receiving process died in the middle of this message"
                        }
                        // (A writer has no deadline: `TimedOut` is the reader's.)
                        Abandoned::PeerGone | Abandoned::OutOfStep | Abandoned::TimedOut => {
                            "the other end of the pipe is gone"
                        }
                    },
                ))
            }
        }
    }

    /// Receives the message a [`FrameKind::Lane`] frame announces into
    /// `state.buf`. A deadline that passes leaves the rest for the next
    /// receive ([`go_on_by_lane`](Self::go_on_by_lane)); any failure breaks
    /// the connection: the lane and the stream no longer agree on where a
    /// message starts.
    pub(super) fn recv_by_lane(
        &self,
        state: &mut RecvState,
        mut frame: wire::InFrame,
        at: Option<Range<usize>>,
        deadline: Option<Instant>,
    ) -> Result<wire::ReceivedFrame, RecvTimeoutError> {
        let started = parse_lane_frame(state.payload(at)).and_then(|message| {
            let fd = frame
                .fds
                .pop()
                .ok_or_else(|| FrameError::BadLane("no lane attached".into()))?;
            SlotRing::receive(&mut state.lane, fd).map_err(FrameError::Io)?;
            Ok(message)
        });
        match started {
            Ok(message) => {
                state.buf.clear();
                state.lane_pending = Some(LanePending {
                    kind: message.kind,
                    fds: frame.fds,
                    next: message.first,
                    left: message.len,
                });
                self.go_on_by_lane(state, deadline)
            }
            Err(e) => Err(break_connection(state, e)),
        }
    }

    /// Reads (the rest of) the pending lane message into `state.buf`.
    pub(super) fn go_on_by_lane(
        &self,
        state: &mut RecvState,
        deadline: Option<Instant>,
    ) -> Result<wire::ReceivedFrame, RecvTimeoutError> {
        let (Some(mut pending), Some(lane)) = (state.lane_pending.take(), state.lane.as_ref())
        else {
            let e = FrameError::BadLane("a message pending on no lane".into());
            return Err(break_connection(state, e));
        };
        let before = state.buf.len();
        // The sender holds the socket's writing side only: its hanging up
        // (or shutting the direction) shows as `RDHUP` or `HUP`.
        let result = lane.read(
            pending.next,
            pending.left,
            &mut state.buf,
            || self.socket_says_gone(PollFlags::RDHUP),
            deadline,
        );
        let why = match result {
            Ok(()) => {
                return Ok((
                    wire::InFrame {
                        kind: pending.kind,
                        fds: pending.fds,
                    },
                    None,
                ));
            }
            Err(Abandoned::TimedOut) => {
                pending.left -= state.buf.len() - before;
                pending.next = lane.next_read();
                state.lane_pending = Some(pending);
                return Err(RecvTimeoutError::Timeout);
            }
            Err(Abandoned::PeerDied) => {
                FrameError::PeerLost("the sending process died in the middle of a message")
            }
            Err(Abandoned::PeerGone) => {
                FrameError::PeerLost("the sender hung up in the middle of a message")
            }
            Err(Abandoned::OutOfStep) => {
                FrameError::BadLane("the message starts where the lane cannot be".into())
            }
        };
        Err(break_connection(state, why))
    }
}

/// A large message whose reader's deadline passed half-way: its kind and
/// descriptors, the slot to go on from and the bytes still to come.
#[derive(Debug)]
pub(super) struct LanePending {
    kind: FrameKind,
    fds: Vec<OwnedFd>,
    next: u32,
    left: usize,
}

/// Marks the connection broken by `e` and says so.
fn break_connection(state: &mut RecvState, e: FrameError) -> RecvTimeoutError {
    state.buf.clear();
    state.lane_pending = None;
    state.broken = Some(e.to_string());
    RecvTimeoutError::Failed(e.into_error())
}
