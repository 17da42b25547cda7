//! The crate's error type.

use std::fmt;
use std::io;

/// A specialised `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One `is_…()` helper per [`ErrorKind`], each `kind() == ErrorKind::…`.
macro_rules! kind_helpers {
    ($($(#[$doc:meta])* $name:ident => $kind:ident,)*) => {
        $(
            $(#[$doc])*
            #[doc = concat!("\n\nWhether [`kind`](Self::kind) is [`ErrorKind::", stringify!($kind), "`].")]
            pub fn $name(&self) -> bool {
                self.kind() == ErrorKind::$kind
            }
        )*
    };
}

/// What kind of failure an [`Error`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The child process could not be started.
    Spawn,
    /// The entry panicked in the child.
    Panicked,
    /// The child exited (with the code in [`Error::exitcode`]) without sending a result.
    Exited,
    /// The child was ended by a signal before it sent a result.
    Signaled,
    /// A deadline passed.
    Timeout,
    /// The other side of a channel is gone (closed, dropped, or its process died).
    Disconnected,
    /// Bytes from another process could not be decoded (malformed, truncated or too large).
    Decode,
    /// A value could not be encoded for sending.
    Encode,
    /// No entry with the requested name is registered in this binary.
    UnknownEntry,
    /// Two entries were registered under the same name.
    DuplicateEntry,
    /// Authentication with a remote peer failed.
    Auth,
    /// The owner of a lock died while holding it.
    OwnerDied,
    /// A barrier is broken (aborted, reset, timed out, or a waiter died).
    BrokenBarrier,
    /// A lock was released by a thread that does not hold it.
    NotOwner,
    /// A semaphore was released above its limit.
    TooManyReleases,
    /// An index was past the end of a sequence (a manager list or array).
    OutOfRange,
    /// The caller asked for something that cannot be done (a queue of
    /// capacity 0, `task_done` called more often than items were put,
    /// receiving on a send-only end, a barrier for no parties, …).
    InvalidInput,
    /// The value was already taken: `join` after `join_timeout` returned
    /// it, or a pool result asked for after `get` returned it.
    AlreadyTaken,
    /// An operating-system call failed.
    Io,
}

impl ErrorKind {
    fn describe(self) -> &'static str {
        match self {
            ErrorKind::Spawn => "could not start process",
            ErrorKind::Panicked => "panicked",
            ErrorKind::Exited => "exited without a result",
            ErrorKind::Signaled => "was killed by a signal",
            ErrorKind::Timeout => "timed out",
            ErrorKind::Disconnected => "disconnected",
            ErrorKind::Decode => "could not decode",
            ErrorKind::Encode => "could not encode",
            ErrorKind::UnknownEntry => "unknown entry",
            ErrorKind::DuplicateEntry => "duplicate entry",
            ErrorKind::Auth => "authentication failed",
            ErrorKind::OwnerDied => "lock owner died",
            ErrorKind::BrokenBarrier => "broken barrier",
            ErrorKind::NotOwner => "not the owner",
            ErrorKind::TooManyReleases => "released too many times",
            ErrorKind::OutOfRange => "index out of range",
            ErrorKind::InvalidInput => "invalid request",
            ErrorKind::AlreadyTaken => "already taken",
            ErrorKind::Io => "I/O error",
        }
    }
}

/// A short phrase for the kind ("timed out", "broken barrier", …), as
/// `std::io::ErrorKind` displays one.
impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Spawn => "could not start a process",
            ErrorKind::Signaled => "killed by a signal",
            other => other.describe(),
        })
    }
}

/// A panic that happened in a child process, as reported back to the parent.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PanicReport {
    /// The panic message.
    pub message: String,
    /// `file:line:column` of the panic, when known.
    pub location: Option<String>,
    /// The backtrace, captured when `RUST_BACKTRACE` is set in the child,
    /// trimmed as std trims a panic's (the same text the child printed on
    /// its stderr; the error's `Display` does not repeat it).
    pub backtrace: Option<String>,
}

impl PanicReport {
    /// What a panic hook sees, as a report: the message, where, and the
    /// backtrace when `RUST_BACKTRACE` asks for one.
    pub(crate) fn from_hook(info: &std::panic::PanicHookInfo<'_>) -> PanicReport {
        let backtrace = std::backtrace::Backtrace::capture();
        PanicReport {
            message: info.payload_as_str().unwrap_or("Box<dyn Any>").to_string(),
            location: info
                .location()
                .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column())),
            backtrace: match backtrace.status() {
                std::backtrace::BacktraceStatus::Captured => Some(trim_backtrace(
                    &backtrace.to_string(),
                    std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v == "full"),
                )),
                _ => None,
            },
        }
    }
}

/// A backtrace as std prints a panic's: without the frames of the panic
/// machinery and the hook that captured it (everything up to
/// `__rust_end_short_backtrace`, or else to the last `rust_begin_unwind` /
/// `core::panicking` / `std::panicking` frame near the top), and without
/// what ran the entry or thread (from `__rust_begin_short_backtrace`, or
/// the `catch_unwind` that multiproc runs an entry under). `full` (as
/// `RUST_BACKTRACE=full`) keeps every frame.
pub(crate) fn trim_backtrace(backtrace: &str, full: bool) -> String {
    if full {
        return backtrace.to_string();
    }
    // A frame is its numbered line and the `at …` lines after it.
    let mut frames: Vec<(String, Vec<&str>)> = Vec::new();
    for line in backtrace.lines() {
        let trimmed = line.trim_start();
        match trimmed.split_once(": ") {
            Some((n, name)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                frames.push((name.to_string(), Vec::new()));
            }
            _ => match frames.last_mut() {
                Some((_, at)) => at.push(line),
                None => return backtrace.to_string(),
            },
        }
    }
    let machinery = |name: &str| {
        name.contains("rust_begin_unwind")
            || name.starts_with("core::panicking::")
            || name.starts_with("std::panicking::")
            || name.starts_with("std::backtrace")
            || name.starts_with("std::rt::begin_panic")
            || name.contains("PanicReport::from_hook")
            || name.contains("panic_hook")
    };
    let start = match frames
        .iter()
        .position(|(name, _)| name.contains("__rust_end_short_backtrace"))
    {
        Some(end) => end + 1,
        None => frames
            .iter()
            .take(24)
            .rposition(|(name, _)| machinery(name))
            .map_or(0, |i| i + 1),
    };
    // The end: where std's runtime or multiproc's registry called the code
    // that panicked; else the outermost `catch_unwind` (the one an entry
    // runs under), with its own frames.
    let rest = &frames[start..];
    let caller = |name: &str| {
        name.contains("__rust_begin_short_backtrace")
            || name.starts_with("multiproc::spawn::registry::")
    };
    let unwind = |name: &str| {
        name.contains("catch_unwind") || name.contains("__rust_try") || name.contains("do_call")
    };
    let end = match rest.iter().position(|(name, _)| caller(name)) {
        Some(i) => i,
        None => match rest.iter().rposition(|(name, _)| unwind(name)) {
            Some(mut i) => {
                while i > 0 && unwind(&rest[i - 1].0) {
                    i -= 1;
                }
                i
            }
            None => rest.len(),
        },
    };
    let mut out = String::new();
    for (i, (name, at)) in rest[..end].iter().enumerate() {
        out += &format!("{i:>4}: {name}\n");
        for line in at {
            out += line;
            out.push('\n');
        }
    }
    out
}

/// The error returned by multiproc operations.
///
/// Opaque on purpose: inspect it with [`Error::kind`] and the `is_*` helpers.
/// Its `Display` says what happened and, where there is one, in which process
/// and entry.
///
/// ```
/// use multiproc::{process_entry, spawn, ErrorKind};
///
/// #[process_entry]
/// fn gives_up(code: i32) -> u32 {
///     std::process::exit(code)
/// }
///
/// #[process_entry]
/// fn checks(n: u32) -> u32 {
///     assert!(n < 10, "{n} is too large");
///     n
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let err = spawn!(gives_up, 3)?.join().unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::Exited);
/// assert_eq!(err.exitcode(), Some(3));
///
/// let err = spawn!(checks, 12)?.join().unwrap_err();
/// assert!(err.is_panicked());
/// let report = err.panic().expect("a panic is reported");
/// assert_eq!(report.message, "12 is too large");
/// // process 'Process-N' (pid …, entry `…::checks`): panicked: '12 is too large' at src/…
/// assert!(err.to_string().contains("12 is too large"));
/// # Ok(())
/// # }
/// ```
pub struct Error {
    inner: Box<Inner>,
}

struct Inner {
    kind: ErrorKind,
    message: String,
    process: Option<String>,
    exitcode: Option<i32>,
    panic: Option<PanicReport>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            inner: Box::new(Inner {
                kind,
                message: message.into(),
                process: None,
                exitcode: None,
                panic: None,
                source: None,
            }),
        }
    }

    pub(crate) fn io(context: impl Into<String>, err: io::Error) -> Error {
        Error::new(ErrorKind::Io, context).with_source(err)
    }

    pub(crate) fn with_source(
        mut self,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Error {
        self.inner.source = Some(source.into());
        self
    }

    /// Names the process (and entry) the error happened in.
    pub(crate) fn in_process(mut self, process: impl Into<String>) -> Error {
        self.inner.process = Some(process.into());
        self
    }

    pub(crate) fn with_exitcode(mut self, code: i32) -> Error {
        self.inner.exitcode = Some(code);
        self
    }

    pub(crate) fn with_panic(mut self, report: PanicReport) -> Error {
        self.inner.panic = Some(report);
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The child's exit code when it is known: its code, or `-N` when it was
    /// ended by signal `N` (as Python's `Process.exitcode`).
    pub fn exitcode(&self) -> Option<i32> {
        self.inner.exitcode
    }

    /// The child's panic, when the error is [`ErrorKind::Panicked`].
    pub fn panic(&self) -> Option<&PanicReport> {
        self.inner.panic.as_ref()
    }

    kind_helpers! {
        /// The child process could not be started.
        is_spawn => Spawn,
        /// The entry panicked in the child.
        is_panicked => Panicked,
        /// The child exited without sending a result.
        is_exited => Exited,
        /// The child was ended by a signal.
        is_signaled => Signaled,
        /// A deadline passed.
        is_timeout => Timeout,
        /// The other side is gone.
        is_disconnected => Disconnected,
        /// Bytes from another process could not be decoded.
        is_decode => Decode,
        /// A value could not be encoded for sending.
        is_encode => Encode,
        /// No entry with the requested name is registered in this binary.
        is_unknown_entry => UnknownEntry,
        /// Two entries were registered under the same name.
        is_duplicate_entry => DuplicateEntry,
        /// Authentication failed.
        is_auth => Auth,
        /// The owner of a lock died while holding it.
        is_owner_died => OwnerDied,
        /// A barrier is broken.
        is_broken_barrier => BrokenBarrier,
        /// A lock was released by a thread that does not hold it.
        is_not_owner => NotOwner,
        /// A semaphore was released above its limit.
        is_too_many_releases => TooManyReleases,
        /// An index was past the end of a sequence.
        is_out_of_range => OutOfRange,
        /// The caller asked for something that cannot be done.
        is_invalid_input => InvalidInput,
        /// The value was already taken.
        is_already_taken => AlreadyTaken,
        /// An operating-system call failed.
        is_io => Io,
    }
}

/// `{}` says what happened, in which process and entry; the underlying
/// cause (an OS error, a codec's message) is [`source`](std::error::Error::source),
/// so that error-chain printers show it once. `{:#}` appends the whole chain
/// on one line (`…: cause: its cause`), as anyhow's does, and `{:?}` (what
/// `fn main() -> multiproc::Result<()>` prints) lists it under "Caused by".
impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(process) = &self.inner.process {
            write!(f, "{process}: ")?;
        }
        f.write_str(self.inner.kind.describe())?;
        self.write_after_kind(f, f.alternate())
    }
}

impl Error {
    /// What `Display` writes after the kind: `: message`, the panic, and
    /// (`chain`) the causes.
    fn write_after_kind(&self, f: &mut impl fmt::Write, chain: bool) -> fmt::Result {
        let inner = &self.inner;
        if !inner.message.is_empty() {
            write!(f, ": {}", inner.message)?;
        }
        if let Some(panic) = &inner.panic {
            write!(f, ": '{}'", panic.message)?;
            if let Some(location) = &panic.location {
                write!(f, " at {location}")?;
            }
        }
        if chain {
            for cause in self.causes() {
                write!(f, ": {cause}")?;
            }
        }
        Ok(())
    }

    /// The message to send to another process that rebuilds the error
    /// with [`Error::new`] and kind `rebuilt_as` (what the wire's code for
    /// this error's kind stands for): `{:#}` without the kind when that is
    /// this error's own, so that the rebuilt `Display` names it once, not
    /// twice; `{:#}` whole when the code loses the kind.
    pub(crate) fn message_for(&self, rebuilt_as: ErrorKind) -> String {
        if rebuilt_as != self.kind() {
            return format!("{self:#}");
        }
        let mut after = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_after_kind(&mut after, true);
        let after = after.strip_prefix(": ").unwrap_or(&after);
        match &self.inner.process {
            Some(process) => format!("{process}: {after}"),
            None => after.to_string(),
        }
    }

    /// The chain of sources, nearest first.
    fn causes(&self) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
        std::iter::successors(std::error::Error::source(self), |e| e.source())
    }
}

/// Reads like `Display` followed by the chain of causes (it is what
/// `fn main() -> multiproc::Result<()>` prints, as anyhow's does); `{:#?}`
/// shows the fields.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !f.alternate() {
            fmt::Display::fmt(self, f)?;
            let causes: Vec<_> = self.causes().collect();
            if causes.is_empty() {
                return Ok(());
            }
            f.write_str("\n\nCaused by:")?;
            for (i, cause) in causes.iter().enumerate() {
                if causes.len() == 1 {
                    write!(f, "\n    {cause}")?;
                } else {
                    write!(f, "\n    {i}: {cause}")?;
                }
            }
            return Ok(());
        }
        let mut s = f.debug_struct("Error");
        s.field("kind", &self.inner.kind);
        s.field("message", &self.inner.message);
        if let Some(process) = &self.inner.process {
            s.field("process", process);
        }
        if let Some(code) = self.inner.exitcode {
            s.field("exitcode", &code);
        }
        if let Some(panic) = &self.inner.panic {
            s.field("panic", panic);
        }
        if let Some(source) = &self.inner.source {
            s.field("source", source);
        }
        s.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<io::Error> for Error {
    fn from(err: io::Error) -> Error {
        Error::new(ErrorKind::Io, "").with_source(err)
    }
}

/// Every kind, in the order of its number on the wire: a kind's number is
/// its index here (append new kinds, never reorder).
const KINDS: [ErrorKind; 19] = [
    ErrorKind::Spawn,
    ErrorKind::Panicked,
    ErrorKind::Exited,
    ErrorKind::Signaled,
    ErrorKind::Timeout,
    ErrorKind::Disconnected,
    ErrorKind::Decode,
    ErrorKind::Encode,
    ErrorKind::UnknownEntry,
    ErrorKind::DuplicateEntry,
    ErrorKind::Auth,
    ErrorKind::OwnerDied,
    ErrorKind::BrokenBarrier,
    ErrorKind::NotOwner,
    ErrorKind::TooManyReleases,
    ErrorKind::OutOfRange,
    ErrorKind::InvalidInput,
    ErrorKind::AlreadyTaken,
    ErrorKind::Io,
];

/// A kind travels as its number; a number that names no kind is a decode
/// error.
impl serde::Serialize for ErrorKind {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        match KINDS.iter().position(|k| k == self) {
            Some(number) => serializer.serialize_u16(number as u16),
            None => Err(serde::ser::Error::custom(format_args!(
                "error kind {self:?} has no number"
            ))),
        }
    }
}

impl<'de> serde::Deserialize<'de> for ErrorKind {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        let number = u16::deserialize(deserializer)?;
        KINDS
            .get(usize::from(number))
            .copied()
            .ok_or_else(|| serde::de::Error::custom(format_args!("unknown error kind {number}")))
    }
}

/// One cause of a travelling error: its `Display` text and, for an OS
/// error, its code.
#[derive(serde::Serialize, serde::Deserialize)]
struct CauseOnWire {
    text: String,
    os_error: Option<i32>,
}

/// An [`Error`] as it travels. The causes are any `dyn Error` and cannot
/// travel as themselves: each goes as its text (and OS error code).
#[derive(serde::Serialize, serde::Deserialize)]
struct ErrorOnWire {
    kind: ErrorKind,
    message: String,
    process: Option<String>,
    exitcode: Option<i32>,
    panic: Option<PanicReport>,
    causes: Vec<CauseOnWire>,
}

/// A cause that came from another process: its text, its OS error code if
/// it was an OS error, and the rest of the chain.
#[derive(Debug)]
struct RemoteCause {
    text: String,
    os_error: Option<i32>,
    next: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl fmt::Display for RemoteCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for RemoteCause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.next
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// The OS error code of a cause: an `io::Error`'s own, or the one a cause
/// that travelled before carries.
fn os_error_of(cause: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let io = cause.downcast_ref::<io::Error>()?;
    io.raw_os_error().or_else(|| {
        io.get_ref()?
            .downcast_ref::<RemoteCause>()
            .and_then(|c| c.os_error)
    })
}

/// A travelled cause, with `next` as its source. An OS error comes back as
/// an `io::Error`: the OS's own for its code when its text is exactly
/// that and nothing follows it (so `raw_os_error()` answers), else one of
/// the code's `io::ErrorKind` that shows the text.
fn rebuild_cause(
    cause: CauseOnWire,
    next: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
) -> Box<dyn std::error::Error + Send + Sync + 'static> {
    let Some(code) = cause.os_error else {
        return Box::new(RemoteCause {
            text: cause.text,
            os_error: None,
            next,
        });
    };
    let own = io::Error::from_raw_os_error(code);
    if next.is_none() && own.to_string() == cause.text {
        return Box::new(own);
    }
    Box::new(io::Error::new(
        own.kind(),
        RemoteCause {
            text: cause.text,
            os_error: Some(code),
            next,
        },
    ))
}

/// An error travels with its kind, message, process, exit code, panic
/// report and the text of each cause (with its OS error code, if it has
/// one), so that after decoding its `Display`, `{:#}`, `{:?}`,
/// [`exitcode`](Error::exitcode) and `is_*()` answers are what they were
/// where it was made. An OS error cause comes back as an [`io::Error`] of
/// the same kind; the other causes come back as their texts. An entry may
/// therefore return [`Result<T>`](crate::Result):
///
/// ```
/// use multiproc::{process_entry, spawn};
///
/// #[process_entry]
/// fn read_config(path: String) -> multiproc::Result<String> {
///     Ok(std::fs::read_to_string(path)?)
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let err = spawn!(read_config, "/nonexistent/config".to_string())?
///     .join()?
///     .unwrap_err();
/// assert!(err.is_io());
/// let cause = std::error::Error::source(&err).expect("the OS error came too");
/// let io = cause.downcast_ref::<std::io::Error>().expect("as an io::Error");
/// assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
/// # Ok(())
/// # }
/// ```
impl serde::Serialize for Error {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        let inner = &self.inner;
        ErrorOnWire {
            kind: inner.kind,
            message: inner.message.clone(),
            process: inner.process.clone(),
            exitcode: inner.exitcode,
            panic: inner.panic.clone(),
            causes: self
                .causes()
                .map(|cause| CauseOnWire {
                    text: cause.to_string(),
                    os_error: os_error_of(cause),
                })
                .collect(),
        }
        .serialize(serializer)
    }
}

/// Decodes what [`Serialize`](serde::Serialize) encoded; an unknown kind
/// number or a malformed field is the decoder's error.
impl<'de> serde::Deserialize<'de> for Error {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        let wire = ErrorOnWire::deserialize(deserializer)?;
        let source = wire
            .causes
            .into_iter()
            .rev()
            .fold(None, |next, cause| Some(rebuild_cause(cause, next)));
        Ok(Error {
            inner: Box::new(Inner {
                kind: wire.kind,
                message: wire.message,
                process: wire.process,
                exitcode: wire.exitcode,
                panic: wire.panic,
                source,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_display_distinct_phrases() {
        let kinds = KINDS;
        let shown: std::collections::HashSet<String> =
            kinds.iter().map(|kind| kind.to_string()).collect();
        assert_eq!(
            shown.len(),
            kinds.len(),
            "two kinds display alike: {shown:?}"
        );
        assert!(shown.iter().all(|s| !s.is_empty()));
        assert_eq!(ErrorKind::Timeout.to_string(), "timed out");
    }

    #[test]
    fn each_kind_has_an_is_helper_true_for_it_alone() {
        type IsHelper = fn(&Error) -> bool;
        let helpers: [(ErrorKind, IsHelper); 19] = [
            (ErrorKind::Spawn, Error::is_spawn),
            (ErrorKind::Panicked, Error::is_panicked),
            (ErrorKind::Exited, Error::is_exited),
            (ErrorKind::Signaled, Error::is_signaled),
            (ErrorKind::Timeout, Error::is_timeout),
            (ErrorKind::Disconnected, Error::is_disconnected),
            (ErrorKind::Decode, Error::is_decode),
            (ErrorKind::Encode, Error::is_encode),
            (ErrorKind::UnknownEntry, Error::is_unknown_entry),
            (ErrorKind::DuplicateEntry, Error::is_duplicate_entry),
            (ErrorKind::Auth, Error::is_auth),
            (ErrorKind::OwnerDied, Error::is_owner_died),
            (ErrorKind::BrokenBarrier, Error::is_broken_barrier),
            (ErrorKind::NotOwner, Error::is_not_owner),
            (ErrorKind::TooManyReleases, Error::is_too_many_releases),
            (ErrorKind::OutOfRange, Error::is_out_of_range),
            (ErrorKind::InvalidInput, Error::is_invalid_input),
            (ErrorKind::AlreadyTaken, Error::is_already_taken),
            (ErrorKind::Io, Error::is_io),
        ];
        for (kind, _) in helpers {
            // Stops compiling when a kind is added: give it a helper above.
            match kind {
                ErrorKind::Spawn
                | ErrorKind::Panicked
                | ErrorKind::Exited
                | ErrorKind::Signaled
                | ErrorKind::Timeout
                | ErrorKind::Disconnected
                | ErrorKind::Decode
                | ErrorKind::Encode
                | ErrorKind::UnknownEntry
                | ErrorKind::DuplicateEntry
                | ErrorKind::Auth
                | ErrorKind::OwnerDied
                | ErrorKind::BrokenBarrier
                | ErrorKind::NotOwner
                | ErrorKind::TooManyReleases
                | ErrorKind::OutOfRange
                | ErrorKind::InvalidInput
                | ErrorKind::AlreadyTaken
                | ErrorKind::Io => {}
            }
            let err = Error::new(kind, "");
            let true_for: Vec<ErrorKind> = helpers
                .iter()
                .filter(|(_, is)| is(&err))
                .map(|&(k, _)| k)
                .collect();
            assert_eq!(true_for, [kind], "the is_ helpers for {kind:?}");
        }
    }

    /// What an error-chain printer (anyhow's `{:#}`, eyre's reports, …)
    /// does: each error's `Display`, then its source's.
    fn chain(err: &dyn std::error::Error) -> String {
        let mut out = err.to_string();
        let mut next = err.source();
        while let Some(e) = next {
            out += &format!(": {e}");
            next = e.source();
        }
        out
    }

    #[test]
    fn the_cause_is_shown_once_by_chain_printers_and_by_debug() {
        let cause = io::Error::new(io::ErrorKind::ConnectionReset, "the peer hung up");
        let err = Error::io("receiving", cause).in_process("Process-3 (entry `m::f`)");
        assert_eq!(
            chain(&err),
            "Process-3 (entry `m::f`): I/O error: receiving: the peer hung up"
        );
        assert_eq!(format!("{err:#}"), chain(&err));
        assert_eq!(
            format!("{err:?}"),
            "Process-3 (entry `m::f`): I/O error: receiving\n\nCaused by:\n    the peer hung up"
        );
        let plain = Error::new(ErrorKind::Timeout, "nothing arrived");
        assert_eq!(format!("{plain:?}"), "timed out: nothing arrived");
        assert!(std::error::Error::source(&plain).is_none());
    }

    fn round_trip(err: &Error) -> Error {
        let mut bytes = Vec::new();
        crate::wire::codec::encode_into(err, &mut bytes).expect("an error encodes");
        crate::wire::codec::decode(&bytes).expect("and decodes")
    }

    #[test]
    fn an_error_round_trips_with_its_kind_text_chain_and_exit_code() {
        for kind in KINDS {
            let err = round_trip(&Error::new(kind, "what happened"));
            assert_eq!(err.kind(), kind);
            assert_eq!(
                err.to_string(),
                Error::new(kind, "what happened").to_string()
            );
        }

        let exited = Error::new(ErrorKind::Exited, "")
            .in_process("process 'Process-2' (pid 12, entry `m::f`)")
            .with_exitcode(3);
        let back = round_trip(&exited);
        assert!(back.is_exited());
        assert_eq!(back.exitcode(), Some(3));
        assert_eq!(back.to_string(), exited.to_string());

        let report = PanicReport {
            message: "boom".into(),
            location: Some("src/lib.rs:1:2".into()),
            backtrace: None,
        };
        let panicked = Error::new(ErrorKind::Panicked, "").with_panic(report.clone());
        let back = round_trip(&panicked);
        assert_eq!(back.panic(), Some(&report));
        assert_eq!(back.to_string(), panicked.to_string());

        // An OS error comes back as the OS's own.
        let os = Error::io("opening", io::Error::from_raw_os_error(libc::ENOENT));
        let back = round_trip(&os);
        assert_eq!(format!("{back:?}"), format!("{os:?}"));
        let cause = std::error::Error::source(&back).expect("the cause");
        let cause = cause.downcast_ref::<io::Error>().expect("an io::Error");
        assert_eq!(cause.raw_os_error(), Some(libc::ENOENT));

        // A chain of causes, one of them an OS error with a text of its
        // own: every text, in order, and the OS error's kind and code,
        // also after a second trip.
        #[derive(Debug)]
        struct Outer(io::Error);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("reading the config")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let chained = Error::new(ErrorKind::Spawn, "starting")
            .with_source(Outer(io::Error::from_raw_os_error(libc::EACCES)));
        let back = round_trip(&round_trip(&chained));
        assert_eq!(chain(&back), chain(&chained));
        assert_eq!(format!("{back:?}"), format!("{chained:?}"));
        assert!(back.is_spawn());
        let custom = Error::io(
            "sending",
            io::Error::new(io::ErrorKind::BrokenPipe, "the peer went away"),
        );
        let back = round_trip(&round_trip(&custom));
        assert_eq!(chain(&back), chain(&custom));
    }

    #[test]
    fn a_malformed_error_is_a_decode_error() {
        #[derive(serde::Serialize)]
        struct Forged {
            kind: u16,
            message: String,
            process: Option<String>,
            exitcode: Option<i32>,
            panic: Option<PanicReport>,
            causes: Vec<CauseOnWire>,
        }
        let forged = |kind| {
            let mut bytes = Vec::new();
            let value = Forged {
                kind,
                message: "m".into(),
                process: None,
                exitcode: None,
                panic: None,
                causes: Vec::new(),
            };
            crate::wire::codec::encode_into(&value, &mut bytes).expect("encodes");
            bytes
        };
        let last = KINDS.len() as u16 - 1;
        let ok: Error = crate::wire::codec::decode(&forged(last)).expect("the last kind");
        assert_eq!(ok.kind(), KINDS[KINDS.len() - 1]);
        for kind in [last + 1, 999, u16::MAX] {
            let err = crate::wire::codec::decode::<Error>(&forged(kind))
                .expect_err("an unknown kind does not decode");
            // postcard drops a custom message; bincode keeps it.
            #[cfg(not(feature = "postcard"))]
            assert!(err.contains("unknown error kind"), "{err}");
            let _ = err;
        }
        let mut bytes = Vec::new();
        let full = Error::io("x", io::Error::from_raw_os_error(libc::EIO));
        crate::wire::codec::encode_into(&full, &mut bytes).expect("encodes");
        for len in 0..bytes.len() {
            assert!(crate::wire::codec::decode::<Error>(&bytes[..len]).is_err());
        }
    }
}
