//! [`Process`] and [`JoinHandle`]: start an entry in a child and collect its result.

use std::ffi::{CString, OsStr, OsString};
use std::fmt;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::process::Signal;
use serde::de::DeserializeOwned;

use super::method::StartMethod;
use super::protocol::{BOOT_ENV, CallHeader, ChildFailure, EnvChanges, Marker};
use super::reaper::{Child, ExitStatus};
use super::registry::Entry;
use crate::error::{Error, ErrorKind, PanicReport};
use crate::wire::{self, FrameKind, OutFrame};

/// A child process to be started: Python's `multiprocessing.Process`.
///
/// ```
/// use multiproc::{entry, process_entry, Process};
///
/// #[process_entry]
/// fn add(a: i32, b: i32) -> i32 { a + b }
///
/// # fn main() -> multiproc::Result<()> {
/// let child = Process::new(entry!(add), (1, 2)).name("adder").start()?;
/// assert_eq!(child.name(), "adder");
/// assert_eq!(child.join()?, 3);
/// # Ok(())
/// # }
/// ```
pub struct Process<E: Entry> {
    args: E::Args,
    name: Option<String>,
    daemon: bool,
    method: Option<StartMethod>,
    env: EnvChanges,
    _entry: PhantomData<E>,
}

impl<E: Entry> fmt::Debug for Process<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Process")
            .field("entry", &E::NAME)
            .field("name", &self.name)
            .field("daemon", &self.daemon)
            .field("method", &self.method)
            .field("env", &self.env)
            .finish_non_exhaustive()
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(1);

/// Python's default name: `Process-` and the numbers of `identity`, joined
/// by `:` (`Process-3`, or `Process-3:1` for the first child of that one).
fn default_name(identity: &[u64]) -> String {
    let numbers: Vec<String> = identity.iter().map(u64::to_string).collect();
    format!("Process-{}", numbers.join(":"))
}

impl<E: Entry> Process<E> {
    /// A process that will run `entry` with `args` (a tuple of the entry's arguments).
    pub fn new(entry: E, args: E::Args) -> Process<E> {
        let _ = entry;
        Process {
            args,
            name: None,
            daemon: false,
            method: None,
            env: EnvChanges::default(),
            _entry: PhantomData,
        }
    }

    /// Names the process (default `Process-N`, N counting from 1). As in
    /// Python, the children of child `N` are by default `Process-N:1`,
    /// `Process-N:2`, …, whatever name child `N` itself was given.
    pub fn name(mut self, name: impl Into<String>) -> Process<E> {
        self.name = Some(name.into());
        self
    }

    /// A daemon is killed when this process exits or dies, however it dies.
    /// Default `false`: non-daemon children are waited for at exit.
    ///
    /// As in Python, a daemon may not start children of its own (its
    /// [`start`](Self::start) fails with kind `Spawn`): they would outlive
    /// it, and so the program, when it is killed.
    pub fn daemon(mut self, daemon: bool) -> Process<E> {
        self.daemon = daemon;
        self
    }

    /// How to start this child; default: [`get_start_method`](crate::get_start_method).
    ///
    /// ```
    /// use multiproc::{entry, process_entry, Process, StartMethod};
    ///
    /// #[process_entry]
    /// fn pid() -> u32 { std::process::id() }
    ///
    /// # fn main() -> multiproc::Result<()> {
    /// # if !multiproc::get_all_start_methods().contains(&StartMethod::ForkServer) {
    /// #     println!("skipped: the fork server needs pidfds, which this system does not give");
    /// #     return Ok(());
    /// # }
    /// let child = Process::new(entry!(pid), ())
    ///     .start_method(StartMethod::ForkServer)
    ///     .start()?;
    /// let pid = child.pid();
    /// assert_eq!(child.join()?, pid);
    /// # Ok(())
    /// # }
    /// ```
    pub fn start_method(mut self, method: StartMethod) -> Process<E> {
        self.method = Some(method);
        self
    }

    /// Sets an environment variable for the child (as
    /// `std::process::Command::env`), under either start method.
    ///
    /// ```
    /// use multiproc::{entry, process_entry, Process};
    ///
    /// #[process_entry]
    /// fn greeting() -> Option<String> {
    ///     std::env::var("GREETING").ok()
    /// }
    ///
    /// # fn main() -> multiproc::Result<()> {
    /// let child = Process::new(entry!(greeting), ())
    ///     .env("GREETING", "hello")
    ///     .start()?;
    /// assert_eq!(child.join()?.as_deref(), Some("hello"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Process<E> {
        let value = value.as_ref().to_os_string();
        self.env.change(key.as_ref().to_os_string(), Some(value));
        self
    }

    /// Removes an environment variable from the child's environment (as
    /// `std::process::Command::env_remove`).
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Process<E> {
        self.env.change(key.as_ref().to_os_string(), None);
        self
    }

    /// Starts the child with an empty environment, but for the variables
    /// set with [`env`](Self::env) after this call (as
    /// `std::process::Command::env_clear`). What multiproc needs to start
    /// the child is passed to it regardless, and is not in the environment
    /// the entry sees. (A binary that needs a variable to load at all, as
    /// `LD_LIBRARY_PATH` for a shared library, needs it set again with
    /// `env` under `StartMethod::Spawn`.)
    pub fn env_clear(mut self) -> Process<E> {
        self.env.clear();
        self
    }

    /// Starts the child; returns a handle to join it.
    ///
    /// The arguments are encoded before the child is started, so an argument
    /// that cannot be encoded is an error here and no process is created.
    pub fn start(self) -> Result<JoinHandle<E::Output>, Error> {
        if super::current::is_daemon() {
            // A daemon is killed with its parent; a child of its own would
            // be left running by that death, outliving the program.
            return Err(Error::new(
                ErrorKind::Spawn,
                format!(
                    "daemonic processes are not allowed to have children \
                     (process '{}' is a daemon; entry `{}` was not started)",
                    super::current::current_process().name(),
                    E::NAME
                ),
            ));
        }
        // The name, or for one of several local entries of one name, the
        // name and place (`name@line:column`), as the child resolves it.
        let entry = super::registry::key_of::<E>()?;
        let method = super::method::resolve(self.method)?;
        // As Python counts: every process started takes a number, named or
        // not, so the default name says how many came before it. A child's
        // children add theirs to its own (`Process-3:1`), as Python's do.
        let number = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut identity = super::current::identity().to_vec();
        identity.push(number);
        let name = self.name.unwrap_or_else(|| default_name(&identity));
        let header = CallHeader {
            entry: entry.to_string(),
            process_name: name.clone(),
            identity,
        };
        let mut frame = OutFrame::new();
        frame
            .encode(&(&header, &self.args))
            .map_err(|e| e.in_process(describe(&name, None, entry)))?;
        drop(self.args);
        let target = Target {
            entry,
            daemon: self.daemon,
            env: self.env,
        };
        start_child(Outgoing::Frame(frame), name, target, method)
    }
}

fn describe(name: &str, pid: Option<u32>, entry: &str) -> String {
    match pid {
        Some(pid) => format!("process '{name}' (pid {pid}, entry `{entry}`)"),
        None => format!("process '{name}' (entry `{entry}`)"),
    }
}

/// What the parent writes to a new child's control socket.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// A call frame.
    Frame(OutFrame),
    /// Arbitrary bytes: only for testing how a child handles bad input.
    #[cfg(feature = "test-hooks")]
    Raw(Vec<u8>),
}

/// What a new child runs, and how it is set up.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) entry: &'static str,
    pub(crate) daemon: bool,
    pub(crate) env: EnvChanges,
}

/// Spawns the child, hands it the call frame and returns its handle.
pub(crate) fn start_child<R>(
    outgoing: Outgoing,
    name: String,
    target: Target,
    method: StartMethod,
) -> Result<JoinHandle<R>, Error> {
    let Target { entry, daemon, env } = target;
    let spawn_err = |e: std::io::Error| {
        Error::new(ErrorKind::Spawn, "")
            .with_source(e)
            .in_process(describe(&name, None, entry))
    };
    let mut outgoing = Some(outgoing);
    let (child, ours) = match method {
        StartMethod::Spawn => {
            let (ours, theirs) = crate::sys::stream_pair().map_err(spawn_err)?;
            let child = spawn_child(theirs, &name, entry, daemon, &env).map_err(spawn_err)?;
            (child, ours)
        }
        StartMethod::ForkServer => {
            super::method::check_supported(method)?;
            // What `Command` refuses under `Spawn`, refused here too, before
            // any child exists.
            if env.has_nul() {
                return Err(Error::new(
                    ErrorKind::Spawn,
                    "an environment variable's name or value contains a NUL byte",
                )
                .in_process(describe(&name, None, entry)));
            }
            // A small call is written before a spare is asked to run (the
            // socket holds it), so the child finds it at once instead of
            // waiting for us; a child forked on request gets it once the
            // server has replied (see `fork_child`).
            let mut early = |ours: BorrowedFd<'_>| {
                if matches!(&outgoing, Some(Outgoing::Frame(frame)) if frame.payload().len() <= EARLY_CALL_MAX)
                {
                    send_call(outgoing.take(), ours);
                }
            };
            let (forked, ours) = super::fork_client::fork_child(entry, daemon, &env, &mut early)
                .map_err(|e| e.in_process(describe(&name, None, entry)))?;
            // The server writes the child's exit status to `forked.status`
            // once it has reaped it (see `reaper.rs`).
            let child = Child::track_forked(name.clone(), daemon, forked);
            (child, ours)
        }
    };
    send_call(outgoing, ours.as_fd());
    Ok(JoinHandle {
        child,
        entry,
        sock: Some(ours),
        reader: wire::FrameReader::default(),
        partial: Vec::new(),
        report: None,
        _result: PhantomData,
    })
}

/// Calls at most this large (payload bytes) are written before the fork
/// server forks the child: well under what a Unix socket buffers (about
/// 200 KiB), so the write cannot block on a reader that does not exist yet.
const EARLY_CALL_MAX: usize = 32 << 10;

/// How long a wait for a child's result goes, without a pidfd, before it
/// asks whether the child still runs (a process it forked may hold its
/// socket open after it is gone).
const EXIT_LOOK: Duration = Duration::from_millis(50);

/// Writes the call (if not written yet) to the child's control socket.
fn send_call(outgoing: Option<Outgoing>, ours: BorrowedFd<'_>) {
    // If the child died before reading its call, `join` reports how it died.
    let _ = match outgoing {
        None => return,
        Some(Outgoing::Frame(mut frame)) => frame.send(ours, FrameKind::Call),
        #[cfg(feature = "test-hooks")]
        Some(Outgoing::Raw(bytes)) => wire::send_all(ours.as_fd(), &bytes, &[]).and_then(|()| {
            rustix::net::shutdown(ours, rustix::net::Shutdown::Write).map_err(Into::into)
        }),
    };
}

/// What a child re-executed from this binary starts with: this program's
/// arguments (as Python's spawn copies `sys.argv`; a child never parses
/// them, since `main` does not run there), the environment with `env`
/// applied, and `control` on its standard input; no other descriptor of
/// ours.
pub(super) struct Relaunch {
    pub(super) control: OwnedFd,
    pub(super) env: EnvChanges,
}

impl Relaunch {
    /// Starts the child; its pid.
    fn spawn(self) -> std::io::Result<u32> {
        let nul = |_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "an argument or environment variable holds a NUL byte",
            )
        };
        let argv = std::env::args_os()
            .map(|arg| CString::new(arg.into_vec()).map_err(nul))
            .collect::<std::io::Result<Vec<_>>>()?;
        let mut vars: Vec<(OsString, OsString)> = if self.env.clear {
            Vec::new()
        } else {
            std::env::vars_os().collect()
        };
        for (key, value) in &self.env.vars {
            vars.retain(|(k, _)| k != key);
            if let Some(value) = value {
                vars.push((key.clone(), value.clone()));
            }
        }
        let envp = vars
            .into_iter()
            .map(|(key, value)| {
                let mut pair = key.into_vec();
                pair.push(b'=');
                pair.extend(value.into_vec());
                CString::new(pair).map_err(nul)
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        if let Some(pid) = crate::sys::spawn::spawn_closing_others(
            c"/proc/self/exe",
            &argv,
            &envp,
            self.control.as_fd(),
        )? {
            return Ok(pid);
        }
        // A C library that cannot close descriptors in `posix_spawn`: std's
        // fork path can.
        let mut cmd = Command::new("/proc/self/exe");
        let mut args = std::env::args_os();
        if let Some(arg0) = args.next() {
            cmd.arg0(arg0);
        }
        cmd.args(args).stdin(Stdio::from(self.control));
        if self.env.clear {
            cmd.env_clear();
        }
        for (key, value) in &self.env.vars {
            match value {
                Some(value) => cmd.env(key, value),
                None => cmd.env_remove(key),
            };
        }
        crate::sys::close_others_at_exec(&mut cmd);
        // `cmd` holds our copy of the child's end of the socket: dropped on
        // return, so that a child that died early makes our send fail.
        cmd.spawn().map(|child| child.id())
    }
}

/// Re-executes this binary as a child that will run `entry`, with `theirs`
/// (its end of the control socket) on fd 0.
fn spawn_child(
    theirs: OwnedFd,
    name: &str,
    entry: &'static str,
    daemon: bool,
    env: &EnvChanges,
) -> std::io::Result<Arc<Child>> {
    let mut env = env.clone();
    // Last, so that no change before can take it away.
    env.change(
        BOOT_ENV.into(),
        Some(Marker::for_child(daemon, super::registry::loaded_count(), entry).into()),
    );
    let launch = Relaunch {
        control: theirs,
        env,
    };
    // Dropped once started (the launch holds our copy of the child's end of
    // the socket), so that a child that died early makes our send fail.
    let pid = if daemon {
        spawn_on_daemon_thread(launch)
    } else {
        launch.spawn()
    }?;
    Ok(Child::track(pid, name.to_string(), daemon))
}

/// The parent-death signal fires when the *thread* that spawned the child
/// ends, so daemons are spawned from one thread that lives as long as the
/// process.
pub(super) fn spawn_on_daemon_thread(launch: Relaunch) -> std::io::Result<u32> {
    type Job = (Relaunch, mpsc::SyncSender<std::io::Result<u32>>);
    static SPAWNER: OnceLock<Option<Mutex<mpsc::Sender<Job>>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("multiproc-daemon-spawner".into())
            .spawn(move || {
                for (launch, reply) in rx {
                    let _ = reply.send(launch.spawn());
                }
            })
            .ok()
            .map(|_| Mutex::new(tx))
    });
    let spawner = spawner
        .as_ref()
        .ok_or_else(|| std::io::Error::other("could not start the daemon spawner thread"))?;
    let (reply_tx, reply_rx) = mpsc::sync_channel(1);
    spawner
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((launch, reply_tx))
        .map_err(|_| std::io::Error::other("daemon spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("daemon spawner thread is gone"))?
}

/// What came back on the control socket.
#[derive(Debug)]
enum Report {
    Value(Vec<u8>, Vec<OwnedFd>),
    Panicked(PanicReport),
    Failed(Error),
    /// End of stream with no frame: the child ended without a result.
    Nothing,
    /// The value was already handed out by `join_timeout`.
    Taken,
}

/// A running (or finished) child process; join it for the entry's result.
///
/// ```
/// use std::time::Duration;
/// use multiproc::{process_entry, spawn, Connection, Pipe};
///
/// #[process_entry]
/// fn double_what_comes(input: Connection<u64>) -> u64 {
///     input.recv().map_or(0, |x| x * 2)
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let (rx, tx) = Pipe::<u64>::simplex()?;
/// let mut child = spawn!(double_what_comes, rx)?;
/// assert!(child.is_alive());
/// assert_eq!(child.exitcode(), None);
///
/// // It waits for its input: a bounded join says so, and leaves the
/// // handle (and the child) as they were.
/// assert_eq!(child.join_timeout(Duration::from_millis(10))?, None);
///
/// tx.send(&21)?;
/// assert_eq!(child.join_timeout(Duration::from_secs(60))?, Some(42));
/// assert!(!child.is_alive());
/// assert_eq!(child.exitcode(), Some(0));
/// # Ok(())
/// # }
/// ```
///
/// # Caveats
/// - Dropping the handle does not stop the child. A child still running is
///   reaped by a background thread when it ends (never left a zombie); a
///   non-daemon one is also waited for when `main` returns, as in Python.
/// - Except when the handle is dropped by a panic unwinding its thread: then
///   the child is killed (`SIGKILL`) before it is left to the reaper. The
///   code that was to join it, and perhaps to feed it or release it, is
///   gone, and a child waiting for that would otherwise keep the program
///   from ever exiting (a failed test would hang the whole test run).
/// - The result may be sent before the child exits; `join` waits for both.
pub struct JoinHandle<R> {
    child: Arc<Child>,
    entry: &'static str,
    sock: Option<OwnedFd>,
    /// Reads the result frame; keeps what came of it when a deadline
    /// passed in its middle (the payload so far in `partial`), so that a
    /// bounded join never waits past its deadline for the rest, and the
    /// next join goes on where it stopped.
    reader: wire::FrameReader,
    partial: Vec<u8>,
    report: Option<Report>,
    _result: PhantomData<fn() -> R>,
}

impl<R> fmt::Debug for JoinHandle<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle")
            .field("pid", &self.child.pid)
            .field("name", &self.child.name)
            .field("entry", &self.entry)
            .field("daemon", &self.child.daemon)
            .finish_non_exhaustive()
    }
}

impl<R> JoinHandle<R> {
    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.pid
    }

    /// The name given to [`Process::name`], or the default `Process-N`.
    pub fn name(&self) -> &str {
        &self.child.name
    }

    /// Whether the child is a daemon.
    pub fn is_daemon(&self) -> bool {
        self.child.daemon
    }

    /// True until the child has exited.
    pub fn is_alive(&self) -> bool {
        self.child.is_running()
    }

    /// The child's record, shared: to ask whether it still runs from
    /// another thread (a pool's, without a pidfd).
    pub(crate) fn child(&self) -> Arc<Child> {
        Arc::clone(&self.child)
    }

    /// For [`crate::wait()`]: the descriptor that becomes readable when the
    /// child ends, if there is one (a pidfd).
    pub(crate) fn exit_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.child.pidfd()
    }

    /// `None` while the child runs; then its exit code, or `-N` if signal `N` ended it.
    ///
    /// Also `None` once the child has ended if how it ended was lost (then
    /// [`is_alive`](Self::is_alive) is false): a child of the fork server
    /// whose server was killed before it could report it, or, before Linux
    /// 6.15, any child of a process that ignores `SIGCHLD` (the kernel then
    /// reaps it at once; since 6.15 it keeps the status for the child's
    /// pidfd, where this reads it).
    pub fn exitcode(&self) -> Option<i32> {
        self.child
            .try_reap()
            .ok()
            .flatten()
            .and_then(ExitStatus::exitcode)
    }

    /// Sends `SIGTERM`. A no-op once the child has exited.
    pub fn terminate(&self) -> Result<(), Error> {
        self.child
            .signal(Signal::TERM)
            .map_err(|e| Error::io("sending SIGTERM", e).in_process(self.describe()))
    }

    /// Sends `SIGKILL`. A no-op once the child has exited.
    pub fn kill(&self) -> Result<(), Error> {
        self.child
            .signal(Signal::KILL)
            .map_err(|e| Error::io("sending SIGKILL", e).in_process(self.describe()))
    }

    fn describe(&self) -> String {
        describe(&self.child.name, Some(self.child.pid), self.entry)
    }
}

impl<R: DeserializeOwned> JoinHandle<R> {
    /// Waits for the child and returns the entry's value, or why there is none.
    ///
    /// Never hangs on a child that died: a crash, a signal or an `exit`
    /// becomes an error naming the cause.
    pub fn join(mut self) -> Result<R, Error> {
        match self.finish(None)? {
            Some(value) => Ok(value),
            None => Err(Error::new(
                ErrorKind::Timeout,
                "join without a deadline timed out",
            )),
        }
    }

    /// Like [`join`](Self::join), but gives up at the deadline: `Ok(None)`
    /// means the child is still running, and the handle stays usable.
    ///
    /// The outcome is handed over once: after `join_timeout` has returned
    /// the value (or the error saying why there is none), a later `join` or
    /// `join_timeout` is an [`ErrorKind::AlreadyTaken`] error, while
    /// [`exitcode`](Self::exitcode) and [`is_alive`](Self::is_alive) still
    /// answer. (Python's `join(timeout)` returns `None` and may be repeated;
    /// a loop ported from it should keep the `Some` it gets.)
    ///
    /// It never waits past the deadline, not even for the rest of a result
    /// the child is in the middle of writing (it was stopped, or is slow):
    /// what came of it is kept, and the next `join` or `join_timeout` goes
    /// on from there.
    pub fn join_timeout(&mut self, timeout: Duration) -> Result<Option<R>, Error> {
        self.finish(Instant::now().checked_add(timeout))
    }

    fn finish(&mut self, deadline: Option<Instant>) -> Result<Option<R>, Error> {
        if self.report.is_none() {
            match self.read_report(deadline)? {
                Some(report) => {
                    self.report = Some(report);
                    self.sock = None;
                    self.reader = wire::FrameReader::default();
                    self.partial = Vec::new();
                }
                None => return Ok(None),
            }
        }
        let status = match self
            .child
            .wait(deadline)
            .map_err(|e| Error::io("waiting for the child", e).in_process(self.describe()))?
        {
            Some(status) => status,
            None => return Ok(None),
        };
        let report = self.report.replace(Report::Taken);
        let err = match report {
            Some(Report::Value(bytes, fds)) => {
                return wire::decode(&bytes, fds).map(Some).map_err(|e| {
                    Error::new(ErrorKind::Decode, "could not decode the result")
                        .with_source(e)
                        .in_process(self.describe())
                });
            }
            Some(Report::Panicked(report)) => {
                Error::new(ErrorKind::Panicked, "").with_panic(report)
            }
            Some(Report::Failed(err)) => err,
            Some(Report::Nothing) | None => match status {
                // `std::process::exit(0)` from an entry that owes nothing (it
                // returns `()`, whose encoding is no bytes) is a normal end,
                // as `sys.exit(0)` is in Python.
                ExitStatus::Code(0) if wire::decode::<R>(&[], Vec::new()).is_ok() => {
                    return wire::decode(&[], Vec::new()).map(Some);
                }
                ExitStatus::Code(code) => {
                    Error::new(ErrorKind::Exited, format!("exit code {code}"))
                }
                ExitStatus::Signal(sig) => Error::new(
                    ErrorKind::Signaled,
                    format!("signal {sig} ({})", signal_name(sig)),
                ),
                ExitStatus::Unknown => Error::new(
                    ErrorKind::Exited,
                    "ended without a result; how is unknown: its exit status was lost (its \
                     fork server died before it could report it, or this process ignores \
                     SIGCHLD, so the kernel reaped the child, and this kernel is older than \
                     Linux 6.15, which keeps the status for the child's pidfd)",
                ),
            },
            Some(Report::Taken) => Error::new(
                ErrorKind::AlreadyTaken,
                "the result was already taken (join_timeout returned it)",
            ),
        };
        let err = match status.exitcode() {
            Some(code) => err.with_exitcode(code),
            None => err,
        };
        Err(err.in_process(self.describe()))
    }

    /// Reads the result frame, or end of stream. `Ok(None)`: deadline passed.
    /// (Without a pidfd, whether the child still runs is asked every
    /// [`EXIT_LOOK`] of the wait.)
    fn read_report(&mut self, deadline: Option<Instant>) -> Result<Option<Report>, Error> {
        let Some(sock) = &self.sock else {
            return Ok(Some(Report::Nothing));
        };
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let poll_failed = |e| Error::io("waiting for the result", e).in_process(self.describe());
        // Watch the child too: a descendant it forked without exec could
        // keep the socket open after the child itself is gone.
        let ready = match self.child.pidfd() {
            Some(pidfd) => {
                let mut fds = [
                    PollFd::new(sock, PollFlags::IN),
                    PollFd::new(&pidfd, PollFlags::IN),
                ];
                let ready = crate::sys::poll::poll(&mut fds, remaining).map_err(poll_failed)?;
                if ready > 0 && fds[0].revents().is_empty() {
                    // Exited. poll looks at the socket before the pidfd, so
                    // a result written and an exit made between those two
                    // looks (this thread descheduled there) show as an exit
                    // alone: look at the socket again. Whatever the child
                    // wrote is in it by now.
                    let mut again = [PollFd::new(sock, PollFlags::IN)];
                    let written = crate::sys::poll::poll(&mut again, Some(Duration::ZERO))
                        .map_err(poll_failed)?;
                    if written == 0 {
                        // Nothing was written before it exited.
                        return Ok(Some(Report::Nothing));
                    }
                }
                ready
            }
            // No pidfd: ask whether the child still runs between slices of
            // the wait, for the same reason.
            None => loop {
                let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                let slice = left.map_or(EXIT_LOOK, |left| left.min(EXIT_LOOK));
                let mut fds = [PollFd::new(sock, PollFlags::IN)];
                let ready = crate::sys::poll::poll(&mut fds, Some(slice)).map_err(poll_failed)?;
                if ready > 0 {
                    break ready;
                }
                if !self.child.is_running() {
                    // Whatever it wrote before it exited is in the socket.
                    let mut again = [PollFd::new(sock, PollFlags::IN)];
                    let written = crate::sys::poll::poll(&mut again, Some(Duration::ZERO))
                        .map_err(poll_failed)?;
                    if written == 0 {
                        return Ok(Some(Report::Nothing));
                    }
                    break written;
                }
                if left.is_some_and(|left| left.is_zero()) {
                    break 0;
                }
            },
        };
        if ready == 0 {
            return Ok(None);
        }
        // Once a frame has begun, the rest is awaited while the child runs:
        // a child that dies mid-frame, its socket kept open by a process it
        // forked, leaves a frame that will never end.
        let child = &self.child;
        let died = || !child.is_running();
        let got = self
            .reader
            .recv(sock.as_fd(), &mut self.partial, Some(&died), deadline);
        let (frame, buf) = match got {
            Ok(Some((frame, Some(at)))) => (frame, self.reader.bytes(at).to_vec()),
            Ok(Some((frame, None))) => (frame, std::mem::take(&mut self.partial)),
            Ok(None) => return Ok(Some(Report::Nothing)),
            // The deadline passed in the middle of the frame (its writer is
            // stopped, or slow): what came of it stays for the next join.
            Err(wire::FrameError::TimedOut) => return Ok(None),
            // A child killed mid-write leaves a truncated frame (or, with its
            // socket held open elsewhere, an unfinished one); report how it
            // died.
            Err(wire::FrameError::Truncated { .. } | wire::FrameError::PeerLost(_)) => {
                return Ok(Some(Report::Nothing));
            }
            Err(wire::FrameError::Io(e)) if e.raw_os_error() == Some(libc::ECONNRESET) => {
                return Ok(Some(Report::Nothing));
            }
            Err(e) => {
                return Ok(Some(Report::Failed(
                    Error::new(ErrorKind::Decode, "bad result frame from the child")
                        .with_source(e.into_error()),
                )));
            }
        };
        Ok(Some(match frame.kind {
            FrameKind::Value => Report::Value(buf, frame.fds),
            FrameKind::SpilledValue => {
                let mut fds = frame.fds;
                match (<[u8; 8]>::try_from(buf.as_slice()), fds.is_empty()) {
                    (Ok(len), false) => {
                        let memfd = fds.remove(0);
                        match wire::read_spill(&memfd, u64::from_le_bytes(len)) {
                            Ok(bytes) => Report::Value(bytes, fds),
                            Err(e) => Report::Failed(Error::io("reading the result", e)),
                        }
                    }
                    _ => Report::Failed(Error::new(ErrorKind::Decode, "malformed spilled result")),
                }
            }
            FrameKind::Panic => match wire::decode::<PanicReport>(&buf, frame.fds) {
                Ok(report) => Report::Panicked(report),
                Err(e) => Report::Failed(e),
            },
            FrameKind::Failure => match wire::decode::<ChildFailure>(&buf, frame.fds) {
                Ok(failure) => Report::Failed(Error::new(failure.kind.into(), failure.message)),
                Err(e) => Report::Failed(e),
            },
            other => Report::Failed(Error::new(
                ErrorKind::Decode,
                format!("the child sent a {other:?} frame instead of a result"),
            )),
        }))
    }
}

impl<R> Drop for JoinHandle<R> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self.child.signal(Signal::KILL);
        }
        if matches!(self.child.try_reap(), Ok(None)) {
            super::reaper::orphan(self.child.clone());
        }
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        _ => "signal",
    }
}

/// Starts a child that is asked to run the entry `name` with no arguments,
/// without the parent's check that it exists. Not public API: for testing
/// the child's handling of unknown entries.
#[doc(hidden)]
#[cfg(feature = "test-hooks")]
pub fn spawn_unchecked_named<R>(name: &str) -> Result<JoinHandle<R>, Error> {
    let header = CallHeader {
        entry: name.to_string(),
        process_name: "unchecked".to_string(),
        identity: Vec::new(),
    };
    let mut frame = OutFrame::new();
    frame.encode(&(&header, &()))?;
    let entry: &'static str = Box::leak(name.to_string().into_boxed_str());
    let method = super::method::resolve(None)?;
    let target = Target {
        entry,
        daemon: false,
        env: EnvChanges::default(),
    };
    start_child(Outgoing::Frame(frame), "unchecked".into(), target, method)
}

/// Starts a child for `entry` and writes `bytes` to its control socket
/// instead of a call frame. Not public API: for testing how a child handles
/// bad input.
#[doc(hidden)]
#[cfg(feature = "test-hooks")]
pub fn spawn_with_raw_call<E: Entry>(
    entry: E,
    bytes: Vec<u8>,
) -> Result<JoinHandle<E::Output>, Error> {
    let _ = entry;
    let method = super::method::resolve(None)?;
    let target = Target {
        entry: E::NAME,
        daemon: false,
        env: EnvChanges::default(),
    };
    start_child(Outgoing::Raw(bytes), "raw".into(), target, method)
}

/// The environment variable, and its value, that makes a copy of this
/// binary started on another machine run `entry` (an argument-less entry)
/// before `main` and exit (see `child::run_remote`).
pub(crate) fn remote_boot_env(entry: &str) -> (&'static str, String) {
    (
        super::protocol::REMOTE_ENV,
        super::protocol::remote_marker(super::registry::loaded_count(), entry),
    )
}

#[cfg(test)]
mod tests {
    use crate::{process_entry, spawn};

    #[process_entry]
    fn triple(x: u64) -> u64 {
        x * 3
    }

    #[test]
    fn entries_defined_in_unit_tests_run_in_a_child() {
        let child = spawn!(triple, 14).unwrap();
        assert_ne!(child.pid(), std::process::id());
        assert_eq!(child.join().unwrap(), 42);
    }

    #[test]
    fn unknown_entry_is_rejected_in_the_parent() {
        let err = crate::spawn::registry::lookup("multiproc::nope").unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::UnknownEntry);
    }
}
