//! Every point where the pool touches the crate's internals: the entry
//! registry, the wire's encoding to bytes plus descriptors, and the error
//! constructors. Kept in one file so that moving those internals means
//! re-pointing only this.

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Mutex, Once};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::proto::{Bytes, FailKind, Item, Outcome};
use crate::error::{Error, ErrorKind, PanicReport};
use crate::fd::Fd;
pub(super) use crate::spawn::registry::RunFn;
use crate::spawn::registry::RunOutcome;
use crate::wire::{OutFrame, decode};

/// The key entry `E` is registered under (its name, or its name and place
/// when another entry shares the name); an error if it is not registered.
pub(super) fn key<E: crate::Entry>() -> Result<&'static str, Error> {
    crate::spawn::registry::key_of::<E>()
}

/// Says which task the worker runs now, for its panic message.
pub(super) fn running(entry: Option<&'static str>) {
    crate::spawn::panic::running_task(entry);
}

/// Checks, in the parent, that `name` is a registered entry.
pub(super) fn check_entry(name: &str) -> Result<(), Error> {
    crate::spawn::registry::lookup(name).map(drop)
}

pub(super) use crate::manager::{Copies, encode_for_copies};

/// Encodes one call's arguments (or any value) into bytes and the
/// descriptors of the handles inside them.
pub(super) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Item, Error> {
    thread_local! {
        static FRAME: RefCell<OutFrame> = RefCell::new(OutFrame::new());
    }
    FRAME.with(|frame| {
        // A value's serde impl could encode another pool task: then use a
        // frame of its own.
        let mut own;
        let mut shared = frame.try_borrow_mut();
        let frame = match &mut shared {
            Ok(frame) => &mut **frame,
            Err(_) => {
                own = OutFrame::new();
                &mut own
            }
        };
        frame.clear();
        let encoded = frame.encode(value).and_then(|()| {
            let fds = frame
                .fds()
                .iter()
                .map(|fd| fd.try_clone().map(Fd::from))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Error::io("duplicating a handle for a pool task", e))?;
            Ok(Item {
                bytes: Bytes::from_slice(frame.payload()),
                fds,
            })
        });
        frame.clear_keeping(FRAME_KEPT);
        encoded
    })
}

/// Room a frame kept for reuse may hold on to between values.
const FRAME_KEPT: usize = 64 << 10;

/// Decodes a value [`encode`] made (in another process).
pub(super) fn decode_item<T: DeserializeOwned>(item: Item) -> Result<T, Error> {
    decode(item.bytes.as_slice(), into_owned(item.fds))
}

fn into_owned(fds: Vec<Fd>) -> Vec<OwnedFd> {
    fds.into_iter().map(Fd::into_owned_fd).collect()
}

thread_local! {
    static RUNNERS: RefCell<HashMap<String, Runner>> = RefCell::new(HashMap::new());
}

/// How a worker runs an entry, and the entry's name (for a panic message).
pub(super) type Runner = (RunFn, &'static str);

/// How a worker runs the entry `name` (looked up once per name).
pub(super) fn runner(name: &str) -> Result<Runner, Outcome> {
    RUNNERS
        .with(|runners| {
            if let Some(runner) = runners.borrow().get(name) {
                return Ok(*runner);
            }
            let record = crate::spawn::registry::lookup(name)?;
            let runner = (record.run(), record.name());
            runners.borrow_mut().insert(name.to_string(), runner);
            Ok::<_, Error>(runner)
        })
        .map_err(|e| failed(&e))
}

/// Runs an entry on encoded arguments, in a worker, through the same code
/// path a child uses for its one entry.
pub(super) fn run(run: RunFn, item: Item) -> Outcome {
    run_as(run, item, false)
}

/// Runs the pool's initializer: as [`run`] does, its arguments decoded as
/// one of the copies of one encoding that every worker gets.
pub(super) fn run_initializer(run: RunFn, item: Item) -> Outcome {
    run_as(run, item, true)
}

fn run_as(run: RunFn, item: Item, copy: bool) -> Outcome {
    thread_local! {
        /// The frame every result of this worker is encoded into.
        static FRAME: RefCell<OutFrame> = RefCell::new(OutFrame::new());
    }
    FRAME.with(|frame| {
        // An entry that runs a pool task inline (through `run`) gets a
        // frame of its own.
        match frame.try_borrow_mut() {
            Ok(mut frame) => run_in(run, item, copy, &mut frame),
            Err(_) => run_in(run, item, copy, &mut OutFrame::new()),
        }
    })
}

fn run_in(run: RunFn, item: Item, copy: bool, frame: &mut OutFrame) -> Outcome {
    take_panic();
    let (args, fds) = (item.bytes.as_slice(), into_owned(item.fds));
    let ran = if copy {
        crate::spawn::registry::run_copy(run, args, fds, frame)
    } else {
        run(args, fds, frame)
    };
    let outcome = match ran {
        RunOutcome::Value => {
            let fds = frame.fds().iter().map(|fd| fd.try_clone().map(Fd::from));
            match fds.collect::<Result<Vec<_>, _>>() {
                Ok(fds) => Outcome::Value(Item {
                    bytes: Bytes::from_slice(frame.payload()),
                    fds,
                }),
                Err(e) => failed(&Error::io("duplicating a handle in a result", e)),
            }
        }
        RunOutcome::Panicked(message) => {
            Outcome::Panicked(crate::spawn::panic::report(take_panic(), message))
        }
        RunOutcome::Failed(e) => failed(&e),
    };
    // The result's handles (or a failed encoding's) are not held here past
    // their task.
    frame.clear_keeping(FRAME_KEPT);
    outcome
}

fn failed(err: &Error) -> Outcome {
    let kind = match err.kind() {
        ErrorKind::Decode => FailKind::Decode,
        ErrorKind::Encode => FailKind::Encode,
        ErrorKind::UnknownEntry => FailKind::UnknownEntry,
        _ => FailKind::Other,
    };
    Outcome::Failed {
        kind,
        message: format!("{err:#}"),
    }
}

static LAST_PANIC: Mutex<Option<PanicReport>> = Mutex::new(None);

fn take_panic() -> Option<PanicReport> {
    LAST_PANIC.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// In a worker: records each panic for the task's error, then hands it to
/// the hook that was there (which prints it, as std does).
pub(super) fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            *LAST_PANIC.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(PanicReport::from_hook(info));
            previous(info);
        }));
    });
}

/// An error of kind `kind` (the crate's constructor is internal).
pub(super) fn error(kind: ErrorKind, message: impl Into<String>) -> Error {
    Error::new(kind, message)
}

/// The error of one item whose task failed in a worker.
pub(super) fn item_error(outcome_kind: FailKind, message: String, context: String) -> Error {
    let kind = match outcome_kind {
        FailKind::Decode => ErrorKind::Decode,
        FailKind::Encode => ErrorKind::Encode,
        FailKind::UnknownEntry => ErrorKind::UnknownEntry,
        FailKind::Other => ErrorKind::Io,
    };
    Error::new(kind, format!("{context}: {message}"))
}

/// The error of one item whose task panicked.
pub(super) fn panic_error(report: PanicReport, context: String, process: String) -> Error {
    Error::new(ErrorKind::Panicked, context)
        .with_panic(report)
        .in_process(process)
}

/// An error with all its parts given.
pub(super) fn failure(
    kind: ErrorKind,
    message: String,
    exitcode: Option<i32>,
    process: Option<String>,
) -> Error {
    let mut err = Error::new(kind, message);
    if let Some(code) = exitcode {
        err = err.with_exitcode(code);
    }
    match process {
        Some(process) => err.in_process(process),
        None => err,
    }
}

/// `signal 9 (SIGKILL)`.
pub(super) fn signal_text(signal: i32) -> String {
    let name = match signal {
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGILL => "SIGILL",
        libc::SIGINT => "SIGINT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGTERM => "SIGTERM",
        _ => return format!("signal {signal}"),
    };
    format!("signal {signal} ({name})")
}

/// Copies an error (errors are not `Clone`), prefixed with `context`.
pub(super) fn copy_error(err: &Error, context: &str) -> Error {
    // The kind is the copy's own: said once, not again inside the message.
    let copy = Error::new(
        err.kind(),
        format!("{context}: {}", err.message_for(err.kind())),
    );
    match err.exitcode() {
        Some(code) => copy.with_exitcode(code),
        None => copy,
    }
}

/// An I/O error with what was being done.
pub(super) fn io_error(context: &str, err: std::io::Error) -> Error {
    Error::io(context, err)
}

/// How many CPUs this process may use.
pub(super) fn cpu_count() -> usize {
    crate::spawn::current::cpu_count()
}

#[cfg(test)]
mod tests {
    use crate::error::ErrorKind;

    #[test]
    fn a_copied_error_names_its_kind_once() {
        let e = super::error(ErrorKind::Spawn, "the pool has no workers left");
        let copy = super::copy_error(&e, "item 3 of `sq`");
        assert_eq!(copy.kind(), ErrorKind::Spawn);
        assert_eq!(
            copy.to_string(),
            "could not start process: item 3 of `sq`: the pool has no workers left"
        );
    }
}
