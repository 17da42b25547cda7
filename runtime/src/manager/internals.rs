//! Every place where the manager touches the rest of the crate's internals
//! (beyond the public `Process`, `Fd` and `Error` API), in one file so they
//! are easy to re-point when the crate's modules move.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorKind};
use crate::spawn::registry::{EntryRecord, RunOutcome};

pub(crate) use crate::sys::dial::{inode, peer_gone, send_fd, seqpacket_pair};

/// Receives a dialled connection (see `sys::dial::recv_fds`).
pub(crate) fn recv_dialed(dial: BorrowedFd<'_>) -> io::Result<Option<Vec<OwnedFd>>> {
    crate::sys::dial::recv_fds(dial)
}

/// Appends the encoding of a user value to `buf` (the crate's codec).
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    value: &T,
    buf: &mut Vec<u8>,
) -> Result<(), Error> {
    // Outside any frame, a handle in `value` refuses and leaves a record of
    // it on this thread: take it, both to word the error (the server keeps
    // bytes, not descriptors) and so that no later error reads it as its own.
    // (A `Serialize` encoding a message can make a manager call: the
    // stored value is still encoded outside that message.)
    let (result, met_a_handle) = crate::wire::outside_frames(|| {
        crate::wire::take_handle_error();
        let result = crate::wire::codec::encode_into(value, buf);
        (result, crate::wire::take_handle_error().is_some())
    });
    result.map_err(|e| {
        if met_a_handle {
            Error::new(ErrorKind::Encode, STORED_HANDLE)
        } else {
            Error::new(ErrorKind::Encode, e)
        }
    })
}

const STORED_HANDLE: &str = "a value stored in a Manager object cannot hold multiproc \
     handles that travel with a descriptor (a Queue, Connection, lock, Value, Fd or another \
     local manager's proxy; this manager's own proxies and remote ones may be stored): the \
     server keeps only bytes; pass handles as entry arguments or in messages instead";

/// Whether a message (not a stored value) is being encoded or decoded on
/// this thread: a proxy in it travels with its descriptor, even while a
/// manager call runs (that message's `Serialize` made the call, or the
/// call's value's `Serialize` sends the message).
pub(crate) fn in_message() -> bool {
    crate::wire::in_frame()
}

/// Whether the value being decoded is one of several copies of one
/// encoding (a pool initializer's arguments).
pub(crate) fn decoding_copy() -> bool {
    crate::wire::decoding_copy()
}

/// Has `undo` run if the message being encoded fails to encode.
pub(crate) fn undo_if_failed(undo: crate::wire::Undo) {
    crate::wire::undo_if_failed(undo);
}

/// Runs `hook` when this process exits (see `reaper::before_exit`).
pub(crate) fn before_exit(hook: fn()) {
    crate::spawn::reaper::before_exit(hook);
}

/// Decodes a user value stored by the server.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    crate::wire::outside_frames(|| crate::wire::codec::decode(bytes))
        .map_err(|e| Error::new(ErrorKind::Decode, e))
}

/// The key entry `E` is registered under (see `registry::key_of`).
pub(crate) fn entry_key<E: crate::Entry>() -> Result<&'static str, Error> {
    crate::spawn::registry::key_of::<E>()
}

/// Finds a registered entry by name (for `update_with`, run on the server).
pub(crate) fn find_entry(name: &str) -> Result<&'static EntryRecord, Error> {
    crate::spawn::registry::lookup(name)
}

/// Runs `record` — an entry `fn(Option<V>) -> V` — on the encoded old value
/// (if any); returns the encoded new value.
pub(crate) fn run_update(
    record: &'static EntryRecord,
    name: &str,
    old: Option<&[u8]>,
) -> Result<Vec<u8>, Error> {
    // The argument tuple `(Option<V>,)` is the encoding of `Some(())` or
    // `None` followed by the value's own bytes: the codec writes a unit as
    // nothing, so this holds for whichever codec is built in.
    let mut args = Vec::new();
    match old {
        Some(old) => {
            encode_into(&Some(()), &mut args)?;
            args.extend_from_slice(old);
        }
        None => encode_into(&None::<()>, &mut args)?,
    }
    // Decoded as a copy: the stored value keeps its proxies' references
    // (a failing entry leaves it stored), and those decoded here take
    // their own; once the entry succeeds, the old value's are given back.
    super::client::replacing_stored(|| run_entry(record, name, &args))
}

fn run_entry(record: &'static EntryRecord, name: &str, args: &[u8]) -> Result<Vec<u8>, Error> {
    let mut frame = crate::wire::OutFrame::new();
    let run = crate::spawn::registry::run_copy;
    match run(record.run(), args, Vec::new(), &mut frame) {
        RunOutcome::Value => {
            if !frame.fds().is_empty() {
                return Err(Error::new(
                    ErrorKind::Encode,
                    format!(
                        "entry `{name}` returned a value holding handles, which a manager cannot store"
                    ),
                ));
            }
            Ok(frame.payload().to_vec())
        }
        RunOutcome::Panicked(_) => Err(Error::new(
            ErrorKind::Panicked,
            format!("entry `{name}` panicked in the manager's server"),
        )),
        RunOutcome::Failed(err) => Err(err),
    }
}

/// Makes an error (the constructor is crate-private).
pub(crate) fn error(kind: ErrorKind, message: impl Into<String>) -> Error {
    Error::new(kind, message)
}

/// The entry a local `Manager`'s server process runs.
#[crate::process_entry]
pub(crate) fn manager_server(dial: crate::Fd) {
    super::run_local_server(dial);
}
