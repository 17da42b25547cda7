//! The child's side: runs before `main`, runs the entry, exits.

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use rustix::process::Signal;

use super::protocol::{
    BOOT_ENV, CallHeader, ChildFailure, EXIT_BOOTSTRAP_FAILED, EXIT_PANICKED, FailureCause, Marker,
    REMOTE_ENV, RESULT_INLINE_MAX, parse_remote_marker,
};
use super::registry::RunFn;
use crate::error::{Error, ErrorKind, PanicReport};
use crate::wire::{self, FrameKind, OutFrame};

/// `None` in a process that is not a bootstrapping child. Read once, and the
/// variable removed, so this child's own children start clean.
fn target() -> Option<&'static Marker> {
    static TARGET: OnceLock<Option<Marker>> = OnceLock::new();
    TARGET
        .get_or_init(|| {
            let marker = std::env::var_os(BOOT_ENV)?;
            // Before anything can start a thread.
            crate::sys::remove_env_before_main(BOOT_ENV);
            match check_marker(&marker.to_string_lossy()) {
                Ok(marker) => Some(marker),
                Err(why) => {
                    eprintln!(
                        "multiproc: ignoring the variable {BOOT_ENV} ({why}); \
                         running the program as usual"
                    );
                    None
                }
            }
        })
        .as_ref()
}

/// The marker is input like any other: acted on only when it is well
/// formed, comes with the control socket a multiproc parent puts on
/// standard input, and this process is not running with more privileges
/// than whoever set its environment (a set-user-ID copy of the program
/// must not run an entry a user chose, bypassing `main`).
fn check_marker(raw: &str) -> Result<Marker, &'static str> {
    if crate::sys::secure_execution() {
        return Err("a set-user-ID, set-group-ID or privileged program never runs as a child");
    }
    let marker = Marker::parse(raw).ok_or("it is not a multiproc marker")?;
    if !crate::sys::stdin_is_socket() {
        return Err("standard input is not a multiproc control socket");
    }
    Ok(marker)
}

crate::__load_time_ctor!(@crate pub(crate) BOOTSTRAP_CTOR => crate::spawn::child::on_load(crate::spawn::registry::loaded_count()));

/// A reference to the bootstrap constructor, stored in every entry record.
///
/// Everything that registers an entry refers to [`BOOTSTRAP_CTOR`] through
/// this, so a linker that drops unreferenced archive members keeps the
/// object holding it in every binary that has entries.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Anchor(#[allow(dead_code)] &'static extern "C" fn());

/// The one [`Anchor`].
pub(crate) const ANCHOR: Anchor = Anchor(&BOOTSTRAP_CTOR);

/// Called by each entry's load-time constructor. Not public API.
#[doc(hidden)]
pub fn entry_loaded(record: &'static super::registry::EntryRecord) {
    on_load(super::registry::register(record));
}

/// Called at load time, before `main`: by the runtime's constructor and by
/// every entry's constructor after it registered, in whatever order the
/// linker laid them out. `loaded` is how many entries have registered so far.
///
/// In a child, once every entry of the binary has registered (the parent,
/// being the same binary, said how many there are), the target is run — or
/// reported unknown — and the child exits here, never reaching `main`. In any
/// other process this returns at once.
pub(crate) fn on_load(loaded: usize) {
    dispatch(loaded, false);
}

/// What [`crate::init`] does: in a child whose entry has not run yet (its
/// entry is in a library loaded after start-up, so fewer entries registered
/// at load time than the parent counted), run it now, or report it unknown.
pub(crate) fn force() {
    dispatch(super::registry::loaded_count(), true);
}

fn dispatch(loaded: usize, force: bool) {
    static DISPATCHED: AtomicBool = AtomicBool::new(false);
    let Some(target) = target() else {
        if let Some(remote) = remote_target()
            && (loaded >= remote.0 || force)
            && !DISPATCHED.swap(true, Ordering::AcqRel)
        {
            exit(run_remote(&remote.1));
        }
        return;
    };
    if (loaded < target.expected && !force) || DISPATCHED.swap(true, Ordering::AcqRel) {
        return;
    }
    if std::os::unix::process::parent_id() != target.parent {
        // A re-executed child (or server) whose parent is not the one the
        // marker names: that parent died before this process started, or
        // the marker was not its. Neither an entry nor `main` is for this
        // process to run. (A child the fork server forks is not checked
        // here: its server may die while it runs, and it runs on.)
        eprintln!(
            "multiproc: the parent process {} of this child is gone; exiting",
            target.parent
        );
        exit(EXIT_BOOTSTRAP_FAILED);
    }
    let code = if target.server {
        // Returns here only in the server; a child it forks goes on in
        // `run_forked` and exits there.
        super::fork_server::serve(target)
    } else {
        let run = super::registry::find_loaded(&target.entry).map(|record| record.run());
        run_child(target, run, take_control_socket())
    };
    exit(code)
}

pub(super) fn exit(code: i32) -> ! {
    // A forked child with a memory holder that used much memory hands its
    // unmapping back to normal scheduling (`sys::holder`).
    crate::sys::holder::before_exit();
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    std::process::exit(code);
}

/// A child just forked by the fork server: from here on it is a child like
/// a re-executed one. `target` names the server as the parent (the process
/// its parent-death signal follows); `started_by` is the process that asked
/// for it, which [`parent_pid`](crate::parent_pid) reports. `control` is its
/// end of the control socket. Its fd 0 is already `/dev/null`, as the
/// server's is (the server took its own socket off fd 0 as a re-executed
/// child does).
pub(super) fn run_forked(target: &Marker, started_by: u32, control: OwnedFd) -> ! {
    super::current::set_started_by(started_by);
    let run = super::registry::find_loaded(&target.entry).map(|record| record.run());
    exit(run_child(target, run, Ok(control)))
}

/// Runs the entry `run` for `target`, with `sock` as the control socket.
fn run_child(target: &Marker, run: Option<RunFn>, sock: std::io::Result<OwnedFd>) -> i32 {
    crate::sys::ignore_sigpipe();
    let sock = match sock {
        Ok(sock) => sock,
        Err(e) => {
            eprintln!("multiproc: child could not set up its control socket: {e}");
            return EXIT_BOOTSTRAP_FAILED;
        }
    };
    if target.entry.is_empty() {
        let failure = Error::new(ErrorKind::Decode, "malformed bootstrap marker");
        send_failure(sock.as_fd(), &failure);
        return EXIT_BOOTSTRAP_FAILED;
    }
    if target.daemon {
        // Die with the parent; if it already died, the signal will never come.
        let _ = rustix::process::set_parent_process_death_signal(Some(Signal::KILL));
        if std::os::unix::process::parent_id() != target.parent {
            return EXIT_BOOTSTRAP_FAILED;
        }
    }
    let Some(run) = run else {
        let failure = Error::new(
            ErrorKind::UnknownEntry,
            format!(
                "no #[process_entry] named `{}` in this binary",
                target.entry
            ),
        );
        send_failure(sock.as_fd(), &failure);
        return EXIT_BOOTSTRAP_FAILED;
    };
    install_panic_hook(&target.entry);

    let mut buf = Vec::new();
    let frame = match wire::recv_frame(sock.as_fd(), &mut buf) {
        Ok(Some(frame)) if frame.kind == FrameKind::Call => frame,
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
        Ok((header, used)) if header.entry == target.entry => (header, used),
        Ok((header, _)) => {
            let failure = Error::new(
                ErrorKind::Decode,
                format!(
                    "call names entry `{}`, marker names `{}`",
                    header.entry, target.entry
                ),
            );
            send_failure(sock.as_fd(), &failure);
            return EXIT_BOOTSTRAP_FAILED;
        }
        Err(e) => {
            send_failure(sock.as_fd(), &e);
            return EXIT_BOOTSTRAP_FAILED;
        }
    };
    super::current::set_child(header.process_name, target.daemon);
    super::current::set_identity(header.identity);
    let mut frame = OutFrame::new();
    let code = match run(&buf[used..], fds, &mut frame) {
        super::registry::RunOutcome::Value => {
            // A result larger than the socket can buffer goes in a memfd,
            // so this child can exit even if its parent never joins it.
            let kind = if frame.payload().len() > RESULT_INLINE_MAX && frame.spill().is_ok() {
                FrameKind::SpilledValue
            } else {
                FrameKind::Value
            };
            // A parent that has gone (or dropped the handle) closed its end;
            // any other failure would show as an exit without a result, so
            // it is said here.
            if let Err(e) = frame.send(sock.as_fd(), kind)
                && !matches!(e.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET))
            {
                eprintln!("multiproc: this child could not send its result: {e}");
            }
            0
        }
        super::registry::RunOutcome::Panicked(message) => {
            let report = super::panic::report(take_panic(), message);
            let mut frame = OutFrame::new();
            if frame.encode(&report).is_ok() {
                let _ = frame.send(sock.as_fd(), FrameKind::Panic);
            }
            EXIT_PANICKED
        }
        super::registry::RunOutcome::Failed(e) => {
            send_failure(sock.as_fd(), &e);
            EXIT_BOOTSTRAP_FAILED
        }
    };
    drop(sock);
    // Like the main process, wait for this child's own unjoined children.
    super::reaper::finish_children();
    code
}

/// Moves the control socket off fd 0 and puts `/dev/null` there, as Python
/// gives its children.
pub(super) fn take_control_socket() -> std::io::Result<OwnedFd> {
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
    let cause = FailureCause::from(err.kind());
    let failure = ChildFailure {
        kind: cause,
        // The parent rebuilds the error with the kind `cause` stands for.
        message: err.message_for(ErrorKind::from(cause)),
    };
    let mut frame = OutFrame::new();
    if frame.encode(&failure).is_ok() {
        let _ = frame.send(sock, FrameKind::Failure);
    }
}

static LAST_PANIC: Mutex<Option<PanicReport>> = Mutex::new(None);

fn take_panic() -> Option<PanicReport> {
    LAST_PANIC.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// Records the panic for the parent, and prints it as std would, but
/// naming the process and entry (`spawn/panic.rs`).
pub(super) fn install_panic_hook(entry: &str) {
    let entry = entry.to_string();
    super::panic::entry_thread_is_this_one();
    std::panic::set_hook(Box::new(move |info| {
        let report = PanicReport::from_hook(info);
        super::panic::print(&report, &entry);
        *LAST_PANIC.lock().unwrap_or_else(|p| p.into_inner()) = Some(report);
    }));
}

/// The entry this process is to run for a launcher on another machine
/// (`REMOTE_ENV`), with the number of entries the binary has; `None` in any
/// other process. Read once, and the variable removed.
fn remote_target() -> Option<&'static (usize, String)> {
    static TARGET: OnceLock<Option<(usize, String)>> = OnceLock::new();
    TARGET
        .get_or_init(|| {
            let raw = std::env::var_os(REMOTE_ENV)?;
            crate::sys::remove_env_before_main(REMOTE_ENV);
            if crate::sys::secure_execution() {
                eprintln!(
                    "multiproc: ignoring the variable {REMOTE_ENV}: a set-user-ID, \
                     set-group-ID or privileged program never runs as a child"
                );
                return None;
            }
            let parsed = parse_remote_marker(&raw.to_string_lossy());
            if parsed.is_none() {
                eprintln!(
                    "multiproc: ignoring the variable {REMOTE_ENV} (it is not a multiproc \
                     marker); running the program as usual"
                );
            }
            parsed
        })
        .as_ref()
}

/// Runs the argument-less `entry` for a launcher on another machine; the
/// exit code: 0 when it returned, [`EXIT_PANICKED`] when it panicked (the
/// hook printed the panic), [`EXIT_BOOTSTRAP_FAILED`] when it
/// could not run.
fn run_remote(entry: &str) -> i32 {
    crate::sys::ignore_sigpipe();
    let Some(record) = super::registry::find_loaded(entry) else {
        eprintln!(
            "multiproc: no #[process_entry] named `{entry}` in this binary \
             (is the same build of the program on every node?)"
        );
        return EXIT_BOOTSTRAP_FAILED;
    };
    install_panic_hook(entry);
    // `()`, the arguments of an argument-less entry, encodes as nothing.
    match (record.run())(&[], Vec::new(), &mut OutFrame::new()) {
        super::registry::RunOutcome::Value => 0,
        super::registry::RunOutcome::Panicked(_) => EXIT_PANICKED,
        super::registry::RunOutcome::Failed(e) => {
            eprintln!("multiproc: could not run `{entry}`: {e}");
            EXIT_BOOTSTRAP_FAILED
        }
    }
}
