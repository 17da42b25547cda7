//! What both sides of a call agree on: the marker variable, the call
//! header, the failure report, exit codes and result limits.
//!
//! The parent (`parent.rs`) writes these and the child (`child.rs`) reads
//! them; neither side imports the other.

use std::os::fd::BorrowedFd;

use serde::{Deserialize, Serialize};

use crate::error::ErrorKind;
use crate::wire::FrameKind;

/// The environment variable that marks a child and carries
/// `<parent pid>:<daemon 0|1>:<number of entries>:<entry name>`, or, for a
/// fork server, `<parent pid>:s:<number of entries>:`.
pub(crate) const BOOT_ENV: &str = "__MULTIPROC_BOOTSTRAP_V1";

/// The environment variable that marks a process started on another
/// machine (by a cluster's launcher, not by us) to run an argument-less
/// entry and exit: `<number of entries>:<entry name>`. It comes with no
/// control socket; the entry finds its way back (over TCP) by itself.
pub(crate) const REMOTE_ENV: &str = "__MULTIPROC_REMOTE_V1";

/// The value of [`REMOTE_ENV`] for `entry` in a binary with `entries`
/// registered entries.
pub(crate) fn remote_marker(entries: usize, entry: &str) -> String {
    format!("{entries}:{entry}")
}

/// Reads a [`REMOTE_ENV`] value: the number of entries and the entry.
pub(crate) fn parse_remote_marker(raw: &str) -> Option<(usize, String)> {
    let (expected, entry) = raw.split_once(':')?;
    let expected = expected.parse().ok()?;
    if entry.is_empty() {
        return None;
    }
    Some((expected, entry.to_string()))
}

/// What the parent tells the child before the arguments.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct CallHeader {
    pub(crate) entry: String,
    pub(crate) process_name: String,
    /// The child's place in the tree of processes (Python's `_identity`):
    /// its parent's, then its own number among its parent's children.
    pub(crate) identity: Vec<u64>,
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
    /// A fork server rather than a child that runs an entry.
    pub(crate) server: bool,
    /// For a fork server: its parent takes each spare's end of its control
    /// socket from the spare itself (`pidfd_getfd`), rather than have it
    /// sent in the spare's announcement (`ForkReply::Spare`).
    pub(crate) fetch: bool,
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

    /// The marker for this process's fork server, in a binary with
    /// `entries` registered entries; `fetch`: as [`Marker::fetch`].
    pub(crate) fn for_server(entries: usize, fetch: bool) -> String {
        let kind = if fetch { "f" } else { "s" };
        format!("{}:{kind}:{entries}:", std::process::id())
    }

    /// Reads a marker; `None` if it is not one.
    pub(crate) fn parse(marker: &str) -> Option<Marker> {
        let mut parts = marker.splitn(4, ':');
        let parent = parts.next()?.parse().ok()?;
        let (daemon, server, fetch) = match parts.next()? {
            "0" => (false, false, false),
            "1" => (true, false, false),
            "s" => (false, true, false),
            "f" => (false, true, true),
            _ => return None,
        };
        let expected = parts.next()?.parse().ok()?;
        let entry = parts.next()?.to_string();
        Some(Marker {
            parent,
            daemon,
            server,
            fetch,
            expected,
            entry,
        })
    }
}

/// Parent to fork server, in a `ForkRequest` frame whose two descriptors
/// are the child's end of its control socket and the write end of its
/// status pipe: fork a child to run `entry`. Or, with no descriptor,
/// parent to a spare the server announced (`ForkReply::Spare`), on its
/// control socket, before its call: run `entry`. No reply.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ForkRequest {
    pub(crate) entry: String,
    pub(crate) daemon: bool,
    /// What the forked child changes in its environment before it runs.
    pub(crate) env: EnvChanges,
}

/// The environment changes `Process::env`, `env_remove` and `env_clear`
/// ask for, as `std::process::Command` records them: `clear` first, then
/// each variable set (`Some`) or removed (`None`), the last change of a
/// key winning.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EnvChanges {
    pub(crate) clear: bool,
    pub(crate) vars: Vec<(std::ffi::OsString, Option<std::ffi::OsString>)>,
}

impl EnvChanges {
    /// Records setting (`Some`) or removing (`None`) `key`.
    pub(crate) fn change(&mut self, key: std::ffi::OsString, value: Option<std::ffi::OsString>) {
        self.vars.retain(|(k, _)| *k != key);
        self.vars.push((key, value));
    }

    /// Records clearing the environment: earlier changes are gone too.
    pub(crate) fn clear(&mut self) {
        self.clear = true;
        self.vars.clear();
    }

    /// Whether a name or value holds a NUL byte, which no environment can.
    pub(crate) fn has_nul(&self) -> bool {
        use std::os::unix::ffi::OsStrExt;
        self.vars.iter().any(|(key, value)| {
            key.as_bytes().contains(&0) || value.as_ref().is_some_and(|v| v.as_bytes().contains(&0))
        })
    }

    /// Whether nothing changes.
    pub(crate) fn is_empty(&self) -> bool {
        !self.clear && self.vars.is_empty()
    }
}

/// Fork server to parent, in a `Forked` frame.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ForkReply {
    /// The reply to a request: the child's pid, with a pidfd for it as the
    /// frame's one descriptor.
    Started { pid: u32 },
    /// The reply to a request: why there is no child.
    Failed { message: String },
    /// Unasked, between requests: a spare forked ahead of time, waiting for
    /// a request. Its descriptors: a pidfd, our end of its control socket
    /// (where its request goes first, then its call), and the read end of
    /// its status pipe; or, where the parent fetches that end from the
    /// spare (`Marker::fetch`), the pidfd and the pipe, and `control` is the
    /// number of that end in the spare, which holds it until its request
    /// comes. (A unix socket sent in a message is in flight until it is
    /// received, and while one is, every unix socket closed on the machine
    /// queues work for the kernel's collector of unreachable sockets.)
    Spare { pid: u32, control: Option<i32> },
    /// Unasked: a spare is being forked, and its `Spare` (or `NoSpare`)
    /// follows. A start that finds no spare waits for it, rather than ask
    /// for a fork of its own behind it.
    SpareComing,
    /// Unasked: the spare of the last `SpareComing` could not be forked.
    NoSpare,
}

/// Set (to anything) in a test process's environment, with the
/// `test-hooks` feature: its fork server fails to fork any spare, as a fork
/// can.
#[cfg(feature = "test-hooks")]
pub(crate) const NO_SPARE_ENV: &str = "MULTIPROC_TEST_NO_SPARE";

/// Set to a number of milliseconds in a test process's environment, with
/// the `test-hooks` feature: its fork server waits that long between
/// saying a spare is coming (`ForkReply::SpareComing`) and forking it.
#[cfg(feature = "test-hooks")]
pub(crate) const SPARE_DELAY_ENV: &str = "MULTIPROC_TEST_SPARE_DELAY_MS";

/// Set to a number of milliseconds in a test process's environment, with
/// the `test-hooks` feature: its fork server waits that long between
/// forking a spare and announcing it (`ForkReply::Spare`).
#[cfg(feature = "test-hooks")]
pub(crate) const ANNOUNCE_DELAY_ENV: &str = "MULTIPROC_TEST_ANNOUNCE_DELAY_MS";

/// Set (to anything) in a test process's environment, with the
/// `test-hooks` feature: it takes itself to be refused descriptors of its
/// children (`pidfd_getfd`), so its fork server sends each spare's end of
/// its control socket in the spare's announcement.
#[cfg(feature = "test-hooks")]
pub(crate) const NO_FETCH_ENV: &str = "MULTIPROC_TEST_NO_FETCH";

/// Set to a number of milliseconds in a test process's environment, with
/// the `test-hooks` feature: its fork server handles each child's end that
/// long after the child's pidfd says it, and forks no spare by the idle
/// rule, so that a test can make a start find no spare while the end of a
/// child it has joined is still unreported.
#[cfg(feature = "test-hooks")]
pub(crate) const LATE_REPORTS_ENV: &str = "MULTIPROC_TEST_LATE_REPORTS_MS";

/// Set (to anything) in a test process's environment, with the
/// `test-hooks` feature: its fork server forks spares only once idle, never
/// for starts in quick succession, so that a test can follow the one spare
/// of the idle rule.
#[cfg(feature = "test-hooks")]
pub(crate) const IDLE_SPARES_ONLY_ENV: &str = "MULTIPROC_TEST_IDLE_SPARES_ONLY";

/// What the fork server writes to a child's status pipe once it has reaped
/// it, in one write (atomic: under `PIPE_BUF`), before closing the pipe.
pub(crate) const STATUS_LEN: usize = 8;

/// How a child ended, as its status pipe carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReportedExit {
    Code(i32),
    Signal(i32),
}

impl ReportedExit {
    pub(crate) fn encode(self) -> [u8; STATUS_LEN] {
        let (kind, value) = match self {
            ReportedExit::Code(code) => (0i32, code),
            ReportedExit::Signal(sig) => (1, sig),
        };
        let mut bytes = [0u8; STATUS_LEN];
        bytes[..4].copy_from_slice(&kind.to_le_bytes());
        bytes[4..].copy_from_slice(&value.to_le_bytes());
        bytes
    }

    /// How the kernel kept it for the child's pidfd.
    pub(crate) fn kept(exit: crate::sys::pidfd::KeptExit) -> ReportedExit {
        match exit {
            crate::sys::pidfd::KeptExit::Code(code) => ReportedExit::Code(code),
            crate::sys::pidfd::KeptExit::Signal(sig) => ReportedExit::Signal(sig),
        }
    }

    pub(crate) fn decode(bytes: [u8; STATUS_LEN]) -> Option<ReportedExit> {
        let [k0, k1, k2, k3, v0, v1, v2, v3] = bytes;
        let value = i32::from_le_bytes([v0, v1, v2, v3]);
        match i32::from_le_bytes([k0, k1, k2, k3]) {
            0 => Some(ReportedExit::Code(value)),
            1 => Some(ReportedExit::Signal(value)),
            _ => None,
        }
    }
}

/// Sends `value` as one frame of `kind`, with `fds` beside it: the fork
/// server's requests and replies, which are small and carry raw descriptors
/// (not handles).
pub(crate) fn send_message<T: Serialize>(
    sock: BorrowedFd<'_>,
    kind: FrameKind,
    value: &T,
    fds: &[BorrowedFd<'_>],
) -> std::io::Result<()> {
    let mut payload = Vec::new();
    crate::wire::codec::encode_into(value, &mut payload).map_err(std::io::Error::other)?;
    let nfds = u16::try_from(fds.len()).map_err(std::io::Error::other)?;
    let mut bytes = crate::wire::header(kind, nfds, payload.len() as u64).to_vec();
    bytes.extend_from_slice(&payload);
    crate::wire::send_all(sock, &bytes, fds)
}

#[cfg(test)]
mod tests {
    use super::Marker;

    #[test]
    fn a_server_marker_says_whether_the_parent_fetches_spares_sockets() {
        for fetch in [false, true] {
            let marker = Marker::parse(&Marker::for_server(3, fetch)).unwrap();
            assert_eq!(marker.parent, std::process::id());
            assert!(marker.server && !marker.daemon);
            assert_eq!((marker.fetch, marker.expected), (fetch, 3));
            assert!(marker.entry.is_empty());
        }
        // A child's marker is never a server's, and never fetches.
        let marker = Marker::parse(&Marker::for_child(true, 2, "m::f")).unwrap();
        assert!(!marker.server && !marker.fetch && marker.daemon);
        assert_eq!(marker.entry, "m::f");
        assert!(Marker::parse("1:x:2:").is_none());
    }
}
