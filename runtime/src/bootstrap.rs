//! The child's side: runs before `main`, runs the entry, exits.

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;

use rustix::process::Signal;

use crate::error::{Error, ErrorKind, PanicReport};
use crate::process::{BOOT_ENV, CallHeader, ChildFailure};
use crate::wire::{self, Kind, OutFrame};

/// Exit code of a child whose entry panicked (Python: an uncaught exception).
const EXIT_PANICKED: i32 = 1;
/// Exit code of a child that could not run its entry at all.
const EXIT_BOOTSTRAP_FAILED: i32 = 2;

/// Called by the load-time constructor (and by [`crate::init`]). In a child
/// it never returns; anywhere else it returns at once.
pub(crate) fn on_load() {
    let Some(marker) = std::env::var_os(BOOT_ENV) else {
        return;
    };
    // Before anything can start a thread, and so that this child's own
    // children are not mistaken for bootstrapping ones.
    crate::sys::remove_env_before_main(BOOT_ENV);
    let code = run_child(&marker.to_string_lossy());
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    std::process::exit(code);
}

fn run_child(marker: &str) -> i32 {
    crate::sys::ignore_sigpipe();
    let sock = match take_control_socket() {
        Ok(sock) => sock,
        Err(e) => {
            eprintln!("multiproc: child could not set up its control socket: {e}");
            return EXIT_BOOTSTRAP_FAILED;
        }
    };
    let Some((parent, daemon)) = parse_marker(marker) else {
        let failure = Error::new(
            ErrorKind::Decode,
            format!("malformed bootstrap marker {marker:?}"),
        );
        send_failure(sock.as_fd(), &failure);
        return EXIT_BOOTSTRAP_FAILED;
    };
    if daemon {
        // Die with the parent; if it already died, the signal will never come.
        let _ = rustix::process::set_parent_process_death_signal(Some(Signal::KILL));
        if std::os::unix::process::parent_id() != parent {
            return EXIT_BOOTSTRAP_FAILED;
        }
    }
    install_panic_hook();

    let mut buf = Vec::new();
    let frame = match wire::recv_frame(sock.as_fd(), &mut buf) {
        Ok(Some(frame)) if frame.kind == Kind::Call => frame,
        // The parent went away before sending the call: nobody to answer.
        Ok(None) => return EXIT_BOOTSTRAP_FAILED,
        Ok(Some(frame)) => {
            let failure = Error::new(
                ErrorKind::Decode,
                format!("expected a call frame, got {:?}", frame.kind),
            );
            send_failure(sock.as_fd(), &failure);
            return EXIT_BOOTSTRAP_FAILED;
        }
        Err(e) => {
            send_failure(sock.as_fd(), &e.into_error());
            return EXIT_BOOTSTRAP_FAILED;
        }
    };
    let (header, fds) = wire::decode_prefix::<CallHeader>(&buf, frame.fds);
    let (header, used) = match header {
        Ok(header) => header,
        Err(e) => {
            send_failure(sock.as_fd(), &e);
            return EXIT_BOOTSTRAP_FAILED;
        }
    };
    crate::info::set_child_name(header.process_name);
    let record = match crate::entry::lookup(&header.entry) {
        Ok(record) => record,
        Err(e) => {
            send_failure(sock.as_fd(), &e);
            return EXIT_BOOTSTRAP_FAILED;
        }
    };
    let code = match record.run(&buf[used..], fds) {
        crate::entry::RunOutcome::Value(mut frame) => {
            let _ = frame.send(sock.as_fd(), Kind::Value);
            0
        }
        crate::entry::RunOutcome::Panicked => {
            let report = take_panic().unwrap_or_else(|| PanicReport {
                message: "panic with no message".into(),
                location: None,
                backtrace: None,
            });
            let mut frame = OutFrame::new();
            if frame.encode(&report).is_ok() {
                let _ = frame.send(sock.as_fd(), Kind::Panic);
            }
            EXIT_PANICKED
        }
        crate::entry::RunOutcome::Failed(e) => {
            send_failure(sock.as_fd(), &e);
            EXIT_BOOTSTRAP_FAILED
        }
    };
    drop(sock);
    // Like the main process, wait for this child's own unjoined children.
    crate::children::finish_children();
    let _ = record.name();
    code
}

fn parse_marker(marker: &str) -> Option<(u32, bool)> {
    let (parent, daemon) = marker.split_once(':')?;
    let parent = parent.parse().ok()?;
    let daemon = match daemon {
        "0" => false,
        "1" => true,
        _ => return None,
    };
    Some((parent, daemon))
}

/// Moves the control socket off fd 0 and puts `/dev/null` there, as Python
/// gives its children.
fn take_control_socket() -> std::io::Result<OwnedFd> {
    let sock = rustix::io::fcntl_dupfd_cloexec(rustix::stdio::stdin(), 3)?;
    let null = rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    rustix::stdio::dup2_stdin(&null)?;
    Ok(sock)
}

fn send_failure(sock: BorrowedFd<'_>, err: &Error) {
    let failure = ChildFailure {
        kind: err.kind().into(),
        message: err.to_string(),
    };
    let mut frame = OutFrame::new();
    if frame.encode(&failure).is_ok() {
        let _ = frame.send(sock, Kind::Failure);
    }
}

static LAST_PANIC: Mutex<Option<PanicReport>> = Mutex::new(None);

fn take_panic() -> Option<PanicReport> {
    LAST_PANIC.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// Records the panic for the parent, then prints it as std would.
fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info.payload_as_str().unwrap_or("Box<dyn Any>").to_string();
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
        let backtrace = std::backtrace::Backtrace::capture();
        let backtrace = match backtrace.status() {
            std::backtrace::BacktraceStatus::Captured => Some(backtrace.to_string()),
            _ => None,
        };
        *LAST_PANIC.lock().unwrap_or_else(|p| p.into_inner()) = Some(PanicReport {
            message,
            location,
            backtrace,
        });
        default(info);
    }));
}
