//! The descriptor side table: handles (a `Queue`, a `Connection`, an
//! `Fd`, …) serialize by moving a descriptor into the table of the encode
//! in progress on this thread, and deserialize by taking one from the
//! decode's table; the value itself carries only the index. Only this
//! module opens such a scope, so a handle serialized anywhere else is an
//! error rather than a copied descriptor number.

use std::cell::{Cell, RefCell};
use std::os::fd::{BorrowedFd, OwnedFd};

use serde::de::DeserializeOwned;

use super::codec;
use crate::error::{Error, ErrorKind};

/// Decodes a received payload, handing `fds` to the handles inside it.
///
/// Every descriptor must be claimed: one that no handle took came with a
/// value whose type has no handle there (a handle sent where none is
/// expected, whose index would otherwise pass for a number), so the value
/// is refused ([`ErrorKind::Decode`]). Unclaimed descriptors are closed.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], fds: Vec<OwnedFd>) -> Result<T, Error> {
    let (result, rest) = decoding(fds, || codec::decode(bytes));
    let value = result.map_err(|e| codec_error(ErrorKind::Decode, e))?;
    let unclaimed = rest.iter().flatten().count();
    if unclaimed > 0 {
        return Err(Error::new(
            ErrorKind::Decode,
            format!(
                "the message carried {unclaimed} handle(s) that its type has no place for \
                 (a handle sent where none is expected); they were closed"
            ),
        ));
    }
    Ok(value)
}

/// Like [`decode`], for a value at the start of `bytes`; returns the bytes used.
pub(crate) fn decode_prefix<T: DeserializeOwned>(
    bytes: &[u8],
    fds: Vec<OwnedFd>,
) -> (Result<(T, usize), Error>, Vec<OwnedFd>) {
    let (result, rest) = decoding(fds, || codec::decode_prefix(bytes));
    (
        result.map_err(|e| codec_error(ErrorKind::Decode, e)),
        rest.into_iter().flatten().collect(),
    )
}

/// The error for a failed encode or decode: a handle's own reason when one
/// failed (some formats replace a serializer's custom message with a
/// generic one), else the codec's message.
pub(crate) fn codec_error(kind: ErrorKind, message: String) -> Error {
    Error::new(kind, take_handle_error().unwrap_or(message))
}

/// An encode's collected descriptors and a decode's offered ones, and an
/// encode's undo actions.
type Tables = (Vec<OwnedFd>, Vec<Option<OwnedFd>>, Vec<Undo>);

/// What to undo if the encode in progress fails: a reference a handle took
/// for its copy (a manager proxy's), which no receiver will give back.
pub(crate) type Undo = Box<dyn FnOnce()>;

/// The undo actions of one encode: run if it failed, dropped (nothing
/// done) if it succeeded.
#[must_use]
pub(crate) struct Undos(Vec<Undo>);

impl Undos {
    pub(crate) fn run(self) {
        for undo in self.0 {
            undo();
        }
    }
}

/// What the codec is doing on this thread, for the handles it meets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Idle,
    Encoding,
    Decoding,
}

thread_local! {
    pub(super) static MODE: Cell<Mode> = const { Cell::new(Mode::Idle) };
    /// The descriptors of the handles met by the encode in progress.
    /// Empty whenever `MODE` is `Idle`.
    pub(super) static OUT_FDS: RefCell<Vec<OwnedFd>> = const { RefCell::new(Vec::new()) };
    /// The descriptors that came with the payload being decoded, each taken
    /// by the handle that names it. Empty whenever `MODE` is `Idle`.
    static IN_FDS: RefCell<Vec<Option<OwnedFd>>> = const { RefCell::new(Vec::new()) };
    /// The descriptors of the encodes and decodes that nested ones interrupted.
    static OUTER: RefCell<Vec<Tables>> = const { RefCell::new(Vec::new()) };
    /// What to undo if the encode in progress fails. Empty whenever `MODE`
    /// is not `Encoding`.
    static UNDO: RefCell<Vec<Undo>> = const { RefCell::new(Vec::new()) };
    /// Why the last handle failed to (de)serialize: some formats replace a
    /// serializer's custom message with a generic one, so the codec asks here.
    static HANDLE_ERROR: RefCell<Option<String>> = const { RefCell::new(None) };
    /// Whether the value being decoded is one of several copies of one
    /// encoding (see [`decode_copy`]).
    static COPY: Cell<bool> = const { Cell::new(false) };
}

/// Like [`decode`], for one of several copies of one encoding (a pool
/// initializer's arguments, which every worker gets): a handle that
/// stands for a counted reference (a manager proxy) takes one of its own
/// rather than the one its encoding took.
pub(crate) fn decode_copy<T: DeserializeOwned>(
    bytes: &[u8],
    fds: Vec<OwnedFd>,
) -> Result<T, Error> {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            COPY.set(self.0);
        }
    }
    let _restore = Restore(COPY.replace(true));
    decode(bytes, fds)
}

/// Whether a [`decode_copy`] is in progress on this thread.
pub(crate) fn decoding_copy() -> bool {
    COPY.get()
}

/// Records why a handle failed to (de)serialize and returns the message,
/// for `serde::{de,ser}::Error::custom`.
pub(crate) fn handle_error(message: String) -> String {
    HANDLE_ERROR.with(|e| *e.borrow_mut() = Some(message.clone()));
    message
}

/// The message of a handle that failed during the current encode or decode.
/// (Also how an encode made outside a frame, as of a manager's stored
/// value, learns that it met a handle.)
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
        } else {
            // A record left by a handle that refused outside any encode
            // (serialized by another crate's serializer, say) is not this
            // encode's: it must not become this one's error message.
            HANDLE_ERROR.with(|e| e.borrow_mut().take());
        }
        Scope { previous }
    }

    /// Inside another encode or decode (a handle's own serializer encoding
    /// something): the outer one's descriptors wait aside.
    #[cold]
    fn set_outer_aside() {
        let outer = (OUT_FDS.take(), IN_FDS.take(), UNDO.take());
        OUTER.with_borrow_mut(|stack| stack.push(outer));
    }

    #[cold]
    fn restore_outer() {
        if let Some((outer_out, outer_in, outer_undo)) = OUTER.with_borrow_mut(Vec::pop) {
            OUT_FDS.set(outer_out);
            IN_FDS.set(outer_in);
            UNDO.set(outer_undo);
        }
    }

    /// Normally the scope's user took its descriptors already; after a
    /// panic, what is left is dropped, so `Idle` finds the tables empty.
    #[cold]
    fn clear_after_panic() {
        OUT_FDS.take();
        IN_FDS.take();
        UNDO.take();
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

/// Whether an encode or decode of a message is in progress on this thread
/// (not a manager's stored value: see [`outside_frames`]).
pub(crate) fn in_frame() -> bool {
    MODE.get() != Mode::Idle
}

/// Runs `f` outside any encode or decode in progress on this thread, as
/// a manager's stored value is encoded and decoded: its handles refuse
/// there rather than join (or take from) the table of a message whose own
/// serde impl made the manager call.
pub(crate) fn outside_frames<R>(f: impl FnOnce() -> R) -> R {
    let _scope = Scope::enter(Mode::Idle);
    f()
}

/// Runs an encode; returns its result, the descriptors its handles gave,
/// and what to undo if the encode (or the message) fails.
pub(crate) fn encoding<R>(f: impl FnOnce() -> R) -> (R, Vec<OwnedFd>, Undos) {
    let _scope = Scope::enter(Mode::Encoding);
    let result = f();
    (result, OUT_FDS.take(), Undos(UNDO.take()))
}

/// Used by handles' `Serialize`: `undo` runs if the message being encoded
/// fails to encode. (Outside a message's encode it is dropped.)
pub(crate) fn undo_if_failed(undo: Undo) {
    if MODE.get() == Mode::Encoding {
        UNDO.with_borrow_mut(|u| u.push(undo));
    }
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
