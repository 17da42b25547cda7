//! Who reaps whom: the table of live children, the orphan reaper, and the
//! wait for unjoined children at exit.
//!
//! A child is reaped exactly once, under its `status` lock, by whichever of
//! these gets there first: its `JoinHandle`, the orphan reaper (after the
//! handle was dropped), [`active_children`](crate::active_children), or the
//! exit hook. Waiting for the exit happens on the pidfd *outside* that lock,
//! so no lock is held across a blocking wait, but one: the kernel keeps the
//! status of a child it reaped (this process ignores `SIGCHLD`) a moment
//! after `waitid` stops seeing it, and that moment is waited for under the
//! lock (`Child::kept_once_released`: microseconds, at most 100 ms).
//!
//! A child forked by the fork server is the server's child, not ours: the
//! server reaps it and writes its exit status to the child's status pipe,
//! whose read end is here. Reaping it here is reading that pipe; waiting is
//! polling it. Where the kernel keeps how a process ended for its pidfds
//! (Linux 6.15 and later), the server has the kernel reap its children as
//! they exit, and the pidfd the server opened for the child says first:
//! waiting polls that pidfd too, and reaping reads the status the kernel
//! kept, without waiting for the server. Otherwise, if the server dies
//! first (the pipe ends without a status), that pidfd says when the child
//! has ended, and its status is [`ExitStatus::Unknown`]; so it is if the
//! server is alive but says nothing for [`STATUS_GRACE`] after the pidfd
//! said the child ended (it is stopped). An ended child is never running,
//! status or not.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::process::{Pid, Signal, WaitId, WaitIdOptions, WaitOptions};

use super::protocol::{ReportedExit, STATUS_LEN};
use crate::sys::pidfd::KeptExit;

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExitStatus {
    Code(i32),
    Signal(i32),
    /// Ended, but how was lost: its fork server died before it could say,
    /// or it was reaped by no one here (this process ignores `SIGCHLD`,
    /// so the kernel reaps its children itself) on a kernel older than
    /// 6.15, which keeps no status for a reaped child.
    Unknown,
}

impl ExitStatus {
    /// As Python's `exitcode`: the code, or `-N` for signal `N`; `None` if
    /// the status was lost.
    pub(crate) fn exitcode(self) -> Option<i32> {
        match self {
            ExitStatus::Code(code) => Some(code),
            ExitStatus::Signal(sig) => Some(-sig),
            ExitStatus::Unknown => None,
        }
    }
}

/// Who reaps a child.
#[derive(Debug)]
enum Reaping {
    /// We do: it is our child.
    Us,
    /// Its fork server does, and reports the status on this pipe.
    Server {
        /// The server's pid, which names it to `fork_client`.
        server: u32,
        status: OwnedFd,
        /// The pipe ended without a status: the server died.
        server_gone: AtomicBool,
        /// When the child's pidfd was first seen readable with no status
        /// in the pipe: the server is late (stopped, or starved).
        late_since: Mutex<Option<Instant>>,
    },
}

/// How long a fork-server child that has ended waits for its status
/// before it is given up as [`ExitStatus::Unknown`]: a stopped or wedged
/// server must not keep `join` waiting for ever. Long enough that a server
/// merely starved of CPU still reports.
const STATUS_GRACE: Duration = Duration::from_secs(2);

/// How often a wait for a fork-server child's status also looks at its
/// pidfd, to notice a child that has ended but is not reported.
const STATUS_LOOK: Duration = Duration::from_millis(200);

/// How long [`Child::kept_once_released`] waits for the kernel to keep the
/// status of a child it reaps (microseconds after its end, normally).
const RELEASE_WITHIN: Duration = Duration::from_millis(100);

/// How often [`Child::kept_once_released`] looks again.
const RELEASE_LOOK: Duration = Duration::from_millis(1);

/// One child process of this process.
#[derive(Debug)]
pub(crate) struct Child {
    pub(crate) pid: u32,
    pub(crate) name: String,
    pub(crate) daemon: bool,
    pidfd: Option<OwnedFd>,
    reaping: Reaping,
    status: Mutex<Option<ExitStatus>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data behind these locks stays consistent even if a holder panicked.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether this kernel has pidfds (Linux 5.3+); checked once.
pub(crate) fn pidfd_supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        if std::env::var_os("MULTIPROC_NO_PIDFD").is_some() {
            return false;
        }
        let me = rustix::process::getpid();
        rustix::process::pidfd_open(me, rustix::process::PidfdFlags::empty()).is_ok()
    })
}

impl Child {
    /// Starts tracking a just-spawned child.
    pub(crate) fn track(pid: u32, name: String, daemon: bool) -> Arc<Child> {
        let pidfd = Pid::from_raw(pid as i32)
            .filter(|_| pidfd_supported())
            .and_then(|pid| {
                rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
            });
        let child = Arc::new(Child {
            pid,
            name,
            daemon,
            pidfd,
            reaping: Reaping::Us,
            status: Mutex::new(None),
        });
        lock(&TABLE).push(child.clone());
        register_exit_hook();
        child
    }

    /// A child of ours that is not in the table of children: not listed by
    /// `active_children`, not waited for at exit (the fork server).
    pub(crate) fn untracked(pid: u32, name: String) -> Arc<Child> {
        let pidfd = Pid::from_raw(pid as i32)
            .filter(|_| pidfd_supported())
            .and_then(|pid| {
                rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
            });
        Arc::new(Child {
            pid,
            name,
            daemon: true,
            pidfd,
            reaping: Reaping::Us,
            status: Mutex::new(None),
        })
    }

    /// Starts tracking a child the fork server just forked.
    pub(crate) fn track_forked(
        name: String,
        daemon: bool,
        forked: super::fork_client::Forked,
    ) -> Arc<Child> {
        let child = Arc::new(Child {
            pid: forked.pid,
            name,
            daemon,
            pidfd: Some(forked.pidfd),
            reaping: Reaping::Server {
                server: forked.server,
                status: forked.status,
                server_gone: AtomicBool::new(false),
                late_since: Mutex::new(None),
            },
            status: Mutex::new(None),
        });
        lock(&TABLE).push(child.clone());
        register_exit_hook();
        child
    }

    /// What to poll for this child's end: its pidfd, or, for a child of the
    /// fork server, its status pipe while the server lives.
    pub(crate) fn wait_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        match &self.reaping {
            Reaping::Server {
                status,
                server_gone,
                ..
            } if !server_gone.load(Ordering::Acquire) => Some(status.as_fd()),
            _ => self.pidfd(),
        }
    }

    /// Whether the child is still running: not reaped, and (for a child
    /// of the fork server, whose status may come late) its pidfd does not
    /// say it has exited.
    pub(crate) fn is_running(&self) -> bool {
        if !matches!(self.try_reap(), Ok(None)) {
            return false;
        }
        match self.reaping {
            Reaping::Server { .. } => !matches!(self.has_ended(), Ok(true)),
            Reaping::Us => true,
        }
    }

    /// A fork-server child's status, from its pipe; `None` while it runs.
    fn reported(
        &self,
        (server, status): (u32, &OwnedFd),
        server_gone: &AtomicBool,
        late_since: &Mutex<Option<Instant>>,
    ) -> io::Result<Option<ExitStatus>> {
        let mut waited = false;
        while !server_gone.load(Ordering::Acquire) {
            let mut bytes = [0u8; STATUS_LEN];
            match rustix::io::read(status, &mut bytes) {
                Ok(STATUS_LEN) => {
                    return Ok(Some(match ReportedExit::decode(bytes) {
                        Some(ReportedExit::Code(code)) => ExitStatus::Code(code),
                        Some(ReportedExit::Signal(sig)) => ExitStatus::Signal(sig),
                        None => ExitStatus::Unknown,
                    }));
                }
                Ok(0) => server_gone.store(true, Ordering::Release),
                Ok(_) => return Err(io::Error::other("short status from the fork server")),
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => {
                    // Where the kernel keeps how a process ended, the
                    // server has it reap its children, and the pidfd says
                    // first (see `wait`). The server's report is still to
                    // come: a start that finds no spare waits for it, as
                    // the server may fork one first.
                    if let Some(exit) = self.kept_exit() {
                        super::fork_client::end_unreported(server, status.as_fd());
                        return Ok(Some(exit));
                    }
                    // Ended but not reported yet: the server reaps and
                    // reports within moments, so wait that long (bounded,
                    // should the server be stopped). A status later than
                    // `STATUS_GRACE` is given up. (Past this wait,
                    // `is_running` asks the pidfd itself: an ended child
                    // never looks alive.)
                    if !self.has_ended()? {
                        return Ok(None);
                    }
                    let since = *lock(late_since).get_or_insert_with(Instant::now);
                    if since.elapsed() >= STATUS_GRACE {
                        return Ok(Some(ExitStatus::Unknown));
                    }
                    if waited {
                        return Ok(None);
                    }
                    waited = true;
                    // Or until the kernel releases it, and keeps its
                    // status: its pidfd then hangs up.
                    let also = self
                        .pidfd
                        .as_ref()
                        .filter(|_| crate::sys::pidfd::kernel_keeps_exits())
                        .map(|pidfd| PollFd::new(pidfd, PollFlags::empty()));
                    poll_with(
                        PollFd::new(status, PollFlags::IN),
                        also,
                        Some(crate::sys::futex::CHECK_PERIOD),
                    )?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        // The server is gone: the child's own pidfd says whether it ended,
        // and how, where the kernel keeps that once whoever inherited it
        // has reaped it.
        Ok(self.has_ended()?.then(|| self.kept_once_released()))
    }

    /// How the child ended, from its pidfd, if the kernel has reaped it and
    /// keeps that (Linux 6.15 and later; see `sys::pidfd`).
    fn kept_exit(&self) -> Option<ExitStatus> {
        let exit = crate::sys::pidfd::kept_exit(self.pidfd.as_ref()?.as_fd())?;
        Some(match exit {
            KeptExit::Code(code) => ExitStatus::Code(code),
            KeptExit::Signal(sig) => ExitStatus::Signal(sig),
        })
    }

    /// How the child, which the kernel reaps, ended. `waitid` stops seeing
    /// it a moment before the kernel keeps its status, so this waits for
    /// that, for at most [`RELEASE_WITHIN`], where the kernel keeps
    /// statuses at all.
    fn kept_once_released(&self) -> ExitStatus {
        let deadline = Instant::now() + RELEASE_WITHIN;
        loop {
            if let Some(exit) = self.kept_exit() {
                return exit;
            }
            let Some(pidfd) = &self.pidfd else {
                return ExitStatus::Unknown;
            };
            if !crate::sys::pidfd::kernel_keeps_exits() || Instant::now() >= deadline {
                return ExitStatus::Unknown;
            }
            // No event asked for: woken by the hang-up of its release, or
            // after the bound of one look.
            let mut fds = [PollFd::new(pidfd, PollFlags::empty())];
            if crate::sys::poll::poll(&mut fds, Some(RELEASE_LOOK)).is_err() {
                return ExitStatus::Unknown;
            }
        }
    }

    /// Whether the child has exited, from its pidfd (without reaping it).
    /// Without a pidfd nothing can be learnt: say it has, so that no wait
    /// lasts for ever.
    fn has_ended(&self) -> io::Result<bool> {
        let Some(pidfd) = &self.pidfd else {
            return Ok(true);
        };
        let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
        Ok(crate::sys::poll::poll(&mut fds, Some(Duration::ZERO))? > 0)
    }

    /// The exit status if the child has ended (reaping it), `None` while it runs.
    pub(crate) fn try_reap(&self) -> io::Result<Option<ExitStatus>> {
        let mut status = lock(&self.status);
        if let Some(status) = *status {
            return Ok(Some(status));
        }
        let reaped = match (&self.reaping, &self.pidfd) {
            (
                Reaping::Server {
                    server,
                    status,
                    server_gone,
                    late_since,
                },
                _,
            ) => self.reported((*server, status), server_gone, late_since)?,
            (Reaping::Us, Some(fd)) => match rustix::process::waitid(
                WaitId::PidFd(fd.as_fd()),
                WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
            ) {
                Ok(st) => st.and_then(|st| {
                    if let Some(code) = st.exit_status() {
                        Some(ExitStatus::Code(code))
                    } else {
                        st.terminating_signal().map(ExitStatus::Signal)
                    }
                }),
                Err(e) => Some(match not_ours(e)? {
                    // Reaped by the kernel (this process ignores SIGCHLD),
                    // which may keep how it ended.
                    ExitStatus::Unknown => self.kept_once_released(),
                    known => known,
                }),
            },
            (Reaping::Us, None) => {
                let pid =
                    Pid::from_raw(self.pid as i32).ok_or_else(|| io::Error::other("bad pid"))?;
                match rustix::process::waitpid(Some(pid), WaitOptions::NOHANG) {
                    Ok(st) => st.and_then(|(_, st)| {
                        if let Some(code) = st.exit_status() {
                            Some(ExitStatus::Code(code))
                        } else {
                            st.terminating_signal().map(ExitStatus::Signal)
                        }
                    }),
                    Err(e) => Some(not_ours(e)?),
                }
            }
        };
        if reaped.is_some() {
            *status = reaped;
            drop(status);
            forget(self);
        }
        Ok(reaped)
    }

    /// The pidfd, when this kernel has them; readable once the child exits.
    pub(crate) fn pidfd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.pidfd.as_ref().map(|fd| fd.as_fd())
    }

    /// Waits until the child ends or the deadline passes; reaps it.
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> io::Result<Option<ExitStatus>> {
        let mut backoff = Duration::from_micros(200);
        loop {
            if let Some(status) = self.try_reap()? {
                return Ok(Some(status));
            }
            let remaining = match deadline {
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Ok(None);
                    }
                    Some(deadline - now)
                }
                None => None,
            };
            match self.wait_fd() {
                Some(fd) => {
                    // A fork-server child's status pipe stays silent if the
                    // server is stopped: look at its pidfd now and then
                    // (`try_reap`, which gives a status up once it is
                    // `STATUS_GRACE` late), rather than be woken by it at
                    // every child's end, which the server's status follows
                    // within moments anyway.
                    let remaining = match &self.reaping {
                        Reaping::Server { server_gone, .. }
                            if !server_gone.load(Ordering::Acquire) =>
                        {
                            Some(remaining.map_or(STATUS_LOOK, |r| r.min(STATUS_LOOK)))
                        }
                        _ => remaining,
                    };
                    // Where the kernel keeps how a process ended, the
                    // server has it reap its children, and the child's
                    // pidfd says it has ended before the server can
                    // (`Child::kept_exit` then says how): wait on both.
                    let also = match (&self.reaping, self.pidfd()) {
                        (Reaping::Server { server_gone, .. }, Some(pidfd))
                            if !server_gone.load(Ordering::Acquire)
                                && crate::sys::pidfd::kernel_keeps_exits() =>
                        {
                            Some(PollFd::from_borrowed_fd(pidfd, PollFlags::IN))
                        }
                        _ => None,
                    };
                    poll_with(PollFd::from_borrowed_fd(fd, PollFlags::IN), also, remaining)?;
                }
                None => {
                    // No pidfd on this kernel: poll the pid with a growing sleep.
                    let nap = remaining.map_or(backoff, |r| r.min(backoff));
                    std::thread::sleep(nap);
                    backoff = (backoff * 2).min(Duration::from_millis(20));
                }
            }
        }
    }

    /// Sends `sig` unless the child has already been reaped (so a recycled
    /// pid is never signalled).
    pub(crate) fn signal(&self, sig: Signal) -> io::Result<()> {
        let status = lock(&self.status);
        if status.is_some() {
            return Ok(());
        }
        let result = match &self.pidfd {
            Some(fd) => rustix::process::pidfd_send_signal(fd, sig),
            None => match Pid::from_raw(self.pid as i32) {
                Some(pid) => rustix::process::kill_process(pid, sig),
                None => return Err(io::Error::other("bad pid")),
            },
        };
        drop(status);
        match result {
            // Already exited (and perhaps a zombie): nothing to do.
            Err(rustix::io::Errno::SRCH) => Ok(()),
            other => other.map_err(Into::into),
        }
    }
}

/// Polls `first`, and `also` if given, for at most `timeout` (`None`: no
/// limit).
fn poll_with(
    first: PollFd<'_>,
    also: Option<PollFd<'_>>,
    timeout: Option<Duration>,
) -> io::Result<usize> {
    match also {
        Some(also) => crate::sys::poll::poll(&mut [first, also], timeout),
        None => crate::sys::poll::poll(&mut [first], timeout),
    }
}

/// A wait for our child that failed with `e`. `ECHILD` says the kernel
/// reaped it already, which it does when it exits in a process that
/// ignores `SIGCHLD` (set so by the program, or inherited through `exec`):
/// it has ended, and how is unknown here (its pidfd may still say: see
/// `Child::kept_exit`). Anything else is an error.
fn not_ours(e: rustix::io::Errno) -> io::Result<ExitStatus> {
    match e {
        rustix::io::Errno::CHILD => Ok(ExitStatus::Unknown),
        e => Err(e.into()),
    }
}

/// Every child not yet reaped.
static TABLE: Mutex<Vec<Arc<Child>>> = Mutex::new(Vec::new());

fn forget(child: &Child) {
    lock(&TABLE).retain(|c| !std::ptr::eq(&**c, child));
}

/// The children still running (reaping those that ended).
pub(crate) fn live() -> Vec<Arc<Child>> {
    let all: Vec<Arc<Child>> = lock(&TABLE).clone();
    all.into_iter().filter(|c| c.is_running()).collect()
}

/// Hands a still-running child whose handle was dropped to the reaper
/// thread, which reaps it as soon as it ends.
pub(crate) fn orphan(child: Arc<Child>) {
    let reaper = REAPER.get_or_init(Reaper::start);
    match reaper {
        Some(reaper) => {
            lock(&reaper.queue).push(child);
            let _ = rustix::io::write(&reaper.wake, &[1]);
        }
        // No reaper thread could be started: the exit hook still reaps it.
        None => drop(child),
    }
}

#[derive(Debug)]
struct Reaper {
    queue: Mutex<Vec<Arc<Child>>>,
    wake: OwnedFd,
}

static REAPER: OnceLock<Option<Reaper>> = OnceLock::new();

impl Reaper {
    fn start() -> Option<Reaper> {
        let (rx, tx) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).ok()?;
        std::thread::Builder::new()
            .name("multiproc-reaper".into())
            .spawn(move || reaper_loop(rx))
            .ok()?;
        Some(Reaper {
            queue: Mutex::new(Vec::new()),
            wake: tx,
        })
    }
}

fn reaper_loop(wake: OwnedFd) {
    let mut orphans: Vec<Arc<Child>> = Vec::new();
    loop {
        if let Some(Some(reaper)) = REAPER.get() {
            orphans.append(&mut lock(&reaper.queue));
        }
        orphans.retain(|c| matches!(c.try_reap(), Ok(None)));
        let without_pidfd = orphans.iter().any(|c| c.wait_fd().is_none());
        let mut fds = vec![PollFd::new(&wake, PollFlags::IN)];
        fds.extend(
            orphans
                .iter()
                .filter_map(|c| c.wait_fd())
                .map(|fd| PollFd::from_borrowed_fd(fd, PollFlags::IN)),
        );
        let timeout = without_pidfd.then_some(Duration::from_millis(50));
        if crate::sys::poll::poll(&mut fds, timeout).is_err() {
            std::thread::sleep(Duration::from_millis(10));
        }
        if fds[0].revents().contains(PollFlags::IN) {
            let mut drain = [0u8; 64];
            let _ = rustix::io::read(&wake, &mut drain);
        }
    }
}

static EXIT_HOOK: AtomicBool = AtomicBool::new(false);

fn register_exit_hook() {
    if !EXIT_HOOK.swap(true, Ordering::AcqRel) {
        let _ = crate::sys::at_exit(exit_hook);
    }
}

extern "C" fn exit_hook() {
    let _ = std::panic::catch_unwind(finish_children);
}

/// Work that must be done before this process exits, before its children
/// are finished (a queue's items still waiting in this process).
static BEFORE_EXIT: Mutex<Vec<fn()>> = Mutex::new(Vec::new());

/// Runs `flush` when this process exits (from `main` returning, `exit`, or
/// a child's entry returning), before its children are killed or waited
/// for. Registering the same function twice runs it once.
pub(crate) fn before_exit(flush: fn()) {
    {
        let mut hooks = lock(&BEFORE_EXIT);
        if !hooks.contains(&flush) {
            hooks.push(flush);
        }
    }
    register_exit_hook();
}

/// What Python does at exit: kill daemonic children, then wait for the rest.
pub(crate) fn finish_children() {
    let hooks: Vec<fn()> = lock(&BEFORE_EXIT).clone();
    for hook in hooks {
        hook();
    }
    let all: Vec<Arc<Child>> = lock(&TABLE).clone();
    for child in all.iter().filter(|c| c.daemon) {
        let _ = child.signal(Signal::KILL);
    }
    for child in &all {
        let _ = child.wait(None);
    }
}
