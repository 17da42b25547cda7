//! Per-operation errors of channels, in crossbeam-channel's vocabulary.
//!
//! "Disconnected" means the other side is gone: every handle to it was
//! dropped or closed, or the processes holding them died (for a queue,
//! which has no other side: it was shut down, or, for a put, this handle
//! was closed). Anything else — a message that does not decode, a broken
//! stream, a value whose `Serialize` fails — is `Failed` with the crate's
//! [`Error`]. The send errors hand the message back in every case.

use std::fmt;

use crate::error::{Error, ErrorKind};

/// Error of a blocking receive.
#[derive(Debug)]
pub enum RecvError {
    /// The other side is gone (a queue: it was shut down) and nothing is
    /// left to receive.
    Disconnected,
    /// The message could not be received or decoded.
    Failed(Error),
}

/// Error of a receive that does not block.
#[derive(Debug)]
pub enum TryRecvError {
    /// Nothing to receive right now.
    Empty,
    /// The other side is gone (a queue: it was shut down) and nothing is
    /// left to receive.
    Disconnected,
    /// The message could not be received or decoded.
    Failed(Error),
}

/// Error of a receive with a deadline.
#[derive(Debug)]
pub enum RecvTimeoutError {
    /// Nothing arrived before the deadline.
    Timeout,
    /// The other side is gone (a queue: it was shut down) and nothing is
    /// left to receive.
    Disconnected,
    /// The message could not be received or decoded.
    Failed(Error),
}

/// Error of a blocking send; gives the message back.
///
/// Unlike crossbeam's (a plain struct), it says why: the channel is closed,
/// or this message could not be sent.
pub enum SendError<T> {
    /// The channel is closed or the other side is gone.
    Disconnected(T),
    /// This message could not be sent (its `Serialize` failed, or an OS
    /// error); the channel is unaffected.
    Failed(T, Error),
}

/// Error of a send that does not block; gives the message back.
pub enum TrySendError<T> {
    /// No room right now.
    Full(T),
    /// The channel is closed or the other side is gone.
    Disconnected(T),
    /// This message could not be sent (its `Serialize` failed, or an OS
    /// error); the channel is unaffected.
    Failed(T, Error),
}

/// Error of a send with a deadline; gives the message back.
pub enum SendTimeoutError<T> {
    /// Still no room at the deadline.
    Timeout(T),
    /// The channel is closed or the other side is gone.
    Disconnected(T),
    /// This message could not be sent (its `Serialize` failed, or an OS
    /// error); the channel is unaffected.
    Failed(T, Error),
}

impl<T> SendError<T> {
    /// The message that was not sent.
    pub fn into_inner(self) -> T {
        match self {
            SendError::Disconnected(t) | SendError::Failed(t, _) => t,
        }
    }

    /// Whether the send failed because the channel is closed.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, SendError::Disconnected(_))
    }

    /// Why this message could not be sent, when it was not for a closed channel.
    pub fn error(&self) -> Option<&Error> {
        match self {
            SendError::Failed(_, e) => Some(e),
            SendError::Disconnected(_) => None,
        }
    }
}

impl<T> TrySendError<T> {
    /// The message that was not sent.
    pub fn into_inner(self) -> T {
        match self {
            TrySendError::Full(t) | TrySendError::Disconnected(t) | TrySendError::Failed(t, _) => t,
        }
    }

    /// Whether the send failed for lack of room.
    pub fn is_full(&self) -> bool {
        matches!(self, TrySendError::Full(_))
    }

    /// Whether the send failed because the channel is closed.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, TrySendError::Disconnected(_))
    }

    /// Why this message could not be sent, when it was not for lack of room
    /// or a closed channel.
    pub fn error(&self) -> Option<&Error> {
        match self {
            TrySendError::Failed(_, e) => Some(e),
            _ => None,
        }
    }
}

impl<T> SendTimeoutError<T> {
    /// The message that was not sent.
    pub fn into_inner(self) -> T {
        match self {
            SendTimeoutError::Timeout(t)
            | SendTimeoutError::Disconnected(t)
            | SendTimeoutError::Failed(t, _) => t,
        }
    }

    /// Whether the deadline passed.
    pub fn is_timeout(&self) -> bool {
        matches!(self, SendTimeoutError::Timeout(_))
    }

    /// Whether the send failed because the channel is closed.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, SendTimeoutError::Disconnected(_))
    }

    /// Why this message could not be sent, when it was not for lack of room
    /// or a closed channel.
    pub fn error(&self) -> Option<&Error> {
        match self {
            SendTimeoutError::Failed(_, e) => Some(e),
            _ => None,
        }
    }
}

impl RecvError {
    /// Whether the other side is gone.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, RecvError::Disconnected)
    }
}

impl TryRecvError {
    /// Whether nothing was there.
    pub fn is_empty(&self) -> bool {
        matches!(self, TryRecvError::Empty)
    }

    /// Whether the other side is gone.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, TryRecvError::Disconnected)
    }
}

impl RecvTimeoutError {
    /// Whether the deadline passed.
    pub fn is_timeout(&self) -> bool {
        matches!(self, RecvTimeoutError::Timeout)
    }

    /// Whether the other side is gone.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, RecvTimeoutError::Disconnected)
    }
}

impl From<RecvError> for TryRecvError {
    fn from(err: RecvError) -> TryRecvError {
        match err {
            RecvError::Disconnected => TryRecvError::Disconnected,
            RecvError::Failed(e) => TryRecvError::Failed(e),
        }
    }
}

impl From<RecvError> for RecvTimeoutError {
    fn from(err: RecvError) -> RecvTimeoutError {
        match err {
            RecvError::Disconnected => RecvTimeoutError::Disconnected,
            RecvError::Failed(e) => RecvTimeoutError::Failed(e),
        }
    }
}

fn disconnected() -> Error {
    Error::new(
        ErrorKind::Disconnected,
        "the other side of the channel is gone",
    )
}

impl From<RecvError> for Error {
    fn from(err: RecvError) -> Error {
        match err {
            RecvError::Disconnected => disconnected(),
            RecvError::Failed(e) => e,
        }
    }
}

impl From<TryRecvError> for Error {
    fn from(err: TryRecvError) -> Error {
        match err {
            TryRecvError::Empty => Error::new(ErrorKind::Timeout, "nothing to receive"),
            TryRecvError::Disconnected => disconnected(),
            TryRecvError::Failed(e) => e,
        }
    }
}

impl From<RecvTimeoutError> for Error {
    fn from(err: RecvTimeoutError) -> Error {
        match err {
            RecvTimeoutError::Timeout => Error::new(ErrorKind::Timeout, "nothing arrived in time"),
            RecvTimeoutError::Disconnected => disconnected(),
            RecvTimeoutError::Failed(e) => e,
        }
    }
}

impl<T> From<SendError<T>> for Error {
    fn from(err: SendError<T>) -> Error {
        match err {
            SendError::Disconnected(_) => disconnected(),
            SendError::Failed(_, e) => e,
        }
    }
}

impl<T> From<TrySendError<T>> for Error {
    fn from(err: TrySendError<T>) -> Error {
        match err {
            TrySendError::Full(_) => Error::new(ErrorKind::Timeout, "the channel is full"),
            TrySendError::Disconnected(_) => disconnected(),
            TrySendError::Failed(_, e) => e,
        }
    }
}

impl<T> From<SendTimeoutError<T>> for Error {
    fn from(err: SendTimeoutError<T>) -> Error {
        match err {
            SendTimeoutError::Timeout(_) => {
                Error::new(ErrorKind::Timeout, "the channel stayed full")
            }
            SendTimeoutError::Disconnected(_) => disconnected(),
            SendTimeoutError::Failed(_, e) => e,
        }
    }
}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvError::Disconnected => f.write_str("receiving on a disconnected channel"),
            RecvError::Failed(e) => write!(f, "receive failed: {e:#}"),
        }
    }
}

impl fmt::Display for TryRecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryRecvError::Empty => f.write_str("receiving on an empty channel"),
            TryRecvError::Disconnected => f.write_str("receiving on a disconnected channel"),
            TryRecvError::Failed(e) => write!(f, "receive failed: {e:#}"),
        }
    }
}

impl fmt::Display for RecvTimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvTimeoutError::Timeout => f.write_str("timed out waiting on a channel"),
            RecvTimeoutError::Disconnected => f.write_str("receiving on a disconnected channel"),
            RecvTimeoutError::Failed(e) => write!(f, "receive failed: {e:#}"),
        }
    }
}

impl<T> fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Disconnected(_) => f.write_str("Disconnected(..)"),
            SendError::Failed(_, e) => write!(f, "Failed(.., {e:?})"),
        }
    }
}

impl<T> fmt::Display for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Disconnected(_) => f.write_str("sending on a disconnected channel"),
            SendError::Failed(_, e) => write!(f, "send failed: {e:#}"),
        }
    }
}

impl<T> fmt::Debug for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("Full(..)"),
            TrySendError::Disconnected(_) => f.write_str("Disconnected(..)"),
            TrySendError::Failed(_, e) => write!(f, "Failed(.., {e:?})"),
        }
    }
}

impl<T> fmt::Display for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("sending on a full channel"),
            TrySendError::Disconnected(_) => f.write_str("sending on a disconnected channel"),
            TrySendError::Failed(_, e) => write!(f, "send failed: {e:#}"),
        }
    }
}

impl<T> fmt::Debug for SendTimeoutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendTimeoutError::Timeout(_) => f.write_str("Timeout(..)"),
            SendTimeoutError::Disconnected(_) => f.write_str("Disconnected(..)"),
            SendTimeoutError::Failed(_, e) => write!(f, "Failed(.., {e:?})"),
        }
    }
}

impl<T> fmt::Display for SendTimeoutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendTimeoutError::Timeout(_) => f.write_str("timed out sending on a full channel"),
            SendTimeoutError::Disconnected(_) => f.write_str("sending on a disconnected channel"),
            SendTimeoutError::Failed(_, e) => write!(f, "send failed: {e:#}"),
        }
    }
}

/// Equal when the variants and messages are, and (for `Failed`) the
/// errors' kinds.
impl<T: PartialEq> PartialEq for SendError<T> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (SendError::Disconnected(a), SendError::Disconnected(b)) => a == b,
            (SendError::Failed(a, e), SendError::Failed(b, f)) => a == b && e.kind() == f.kind(),
            _ => false,
        }
    }
}

impl<T: Eq> Eq for SendError<T> {}

/// Equal when the variants and messages are, and (for `Failed`) the
/// errors' kinds.
impl<T: PartialEq> PartialEq for TrySendError<T> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (TrySendError::Full(a), TrySendError::Full(b))
            | (TrySendError::Disconnected(a), TrySendError::Disconnected(b)) => a == b,
            (TrySendError::Failed(a, e), TrySendError::Failed(b, f)) => {
                a == b && e.kind() == f.kind()
            }
            _ => false,
        }
    }
}

impl<T: Eq> Eq for TrySendError<T> {}

/// Equal when the variants and messages are, and (for `Failed`) the
/// errors' kinds.
impl<T: PartialEq> PartialEq for SendTimeoutError<T> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (SendTimeoutError::Timeout(a), SendTimeoutError::Timeout(b))
            | (SendTimeoutError::Disconnected(a), SendTimeoutError::Disconnected(b)) => a == b,
            (SendTimeoutError::Failed(a, e), SendTimeoutError::Failed(b, f)) => {
                a == b && e.kind() == f.kind()
            }
            _ => false,
        }
    }
}

impl<T: Eq> Eq for SendTimeoutError<T> {}

/// Equal when the variants are, and (for `Failed`) the errors' kinds, so
/// that `assert_eq!(q.try_get(), Err(TryRecvError::Empty))` reads as with
/// crossbeam.
impl PartialEq for RecvError {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (RecvError::Disconnected, RecvError::Disconnected) => true,
            (RecvError::Failed(e), RecvError::Failed(f)) => e.kind() == f.kind(),
            _ => false,
        }
    }
}

impl Eq for RecvError {}

/// Equal when the variants are, and (for `Failed`) the errors' kinds.
impl PartialEq for TryRecvError {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (TryRecvError::Empty, TryRecvError::Empty)
            | (TryRecvError::Disconnected, TryRecvError::Disconnected) => true,
            (TryRecvError::Failed(e), TryRecvError::Failed(f)) => e.kind() == f.kind(),
            _ => false,
        }
    }
}

impl Eq for TryRecvError {}

/// Equal when the variants are, and (for `Failed`) the errors' kinds.
impl PartialEq for RecvTimeoutError {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (RecvTimeoutError::Timeout, RecvTimeoutError::Timeout)
            | (RecvTimeoutError::Disconnected, RecvTimeoutError::Disconnected) => true,
            (RecvTimeoutError::Failed(e), RecvTimeoutError::Failed(f)) => e.kind() == f.kind(),
            _ => false,
        }
    }
}

impl Eq for RecvTimeoutError {}

impl std::error::Error for RecvError {}
impl std::error::Error for TryRecvError {}
impl std::error::Error for RecvTimeoutError {}
impl<T> std::error::Error for SendError<T> {}
impl<T> std::error::Error for TrySendError<T> {}
impl<T> std::error::Error for SendTimeoutError<T> {}
