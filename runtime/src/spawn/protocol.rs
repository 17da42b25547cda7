//! What both sides of a call agree on: the marker variable, the call
//! header, the failure report, exit codes and result limits.
//!
//! The parent (`parent.rs`) writes these and the child (`child.rs`) reads
//! them; neither side imports the other.

use serde::{Deserialize, Serialize};

use crate::error::ErrorKind;

/// The environment variable that marks a child and carries
/// `<parent pid>:<daemon 0|1>:<number of entries>:<entry name>`.
pub(crate) const BOOT_ENV: &str = "__MULTIPROC_BOOTSTRAP_V1";

/// What the parent tells the child before the arguments.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct CallHeader {
    pub(crate) entry: String,
    pub(crate) process_name: String,
}

/// Why a child could not run its entry, as sent to the parent.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ChildFailure {
    pub(crate) kind: FailureCause,
    pub(crate) message: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) enum FailureCause {
    UnknownEntry,
    DuplicateEntry,
    Decode,
    Encode,
    Other,
}

impl From<ErrorKind> for FailureCause {
    fn from(kind: ErrorKind) -> FailureCause {
        match kind {
            ErrorKind::UnknownEntry => FailureCause::UnknownEntry,
            ErrorKind::DuplicateEntry => FailureCause::DuplicateEntry,
            ErrorKind::Decode => FailureCause::Decode,
            ErrorKind::Encode => FailureCause::Encode,
            _ => FailureCause::Other,
        }
    }
}

impl From<FailureCause> for ErrorKind {
    fn from(kind: FailureCause) -> ErrorKind {
        match kind {
            FailureCause::UnknownEntry => ErrorKind::UnknownEntry,
            FailureCause::DuplicateEntry => ErrorKind::DuplicateEntry,
            FailureCause::Decode => ErrorKind::Decode,
            FailureCause::Encode => ErrorKind::Encode,
            FailureCause::Other => ErrorKind::Spawn,
        }
    }
}

/// Results larger than this travel in a memfd (the socket buffers ~200 KiB).
pub(crate) const RESULT_INLINE_MAX: usize = 64 << 10;
/// Exit code of a child whose entry panicked (Python: an uncaught exception).
pub(crate) const EXIT_PANICKED: i32 = 1;
/// Exit code of a child that could not run its entry at all.
pub(crate) const EXIT_BOOTSTRAP_FAILED: i32 = 2;

/// What the marker variable asks of this child.
#[derive(Debug)]
pub(crate) struct Marker {
    pub(crate) parent: u32,
    pub(crate) daemon: bool,
    /// How many entries the parent's registry holds (it is the same binary).
    pub(crate) expected: usize,
    pub(crate) entry: String,
}

impl Marker {
    /// The marker for a child of this process that is to run `entry`, in a
    /// binary with `entries` registered entries.
    pub(crate) fn for_child(daemon: bool, entries: usize, entry: &str) -> String {
        format!(
            "{}:{}:{entries}:{entry}",
            std::process::id(),
            if daemon { 1 } else { 0 },
        )
    }

    /// Reads a marker; `None` if it is not one.
    pub(crate) fn parse(marker: &str) -> Option<Marker> {
        let mut parts = marker.splitn(4, ':');
        let parent = parts.next()?.parse().ok()?;
        let daemon = match parts.next()? {
            "0" => false,
            "1" => true,
            _ => return None,
        };
        let expected = parts.next()?.parse().ok()?;
        let entry = parts.next()?.to_string();
        Some(Marker {
            parent,
            daemon,
            expected,
            entry,
        })
    }
}
