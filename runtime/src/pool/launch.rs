//! How workers are started and reached: [`Launch`], implemented here for
//! local workers (a child process per worker, by either start method) and
//! in `cluster/` for workers on other machines.

use std::fmt;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::sync::Arc;

use super::link::{Link, QueuedConnection};
use super::proto::{Boot, Msg};
use super::task;
use crate::Pipe;
use crate::{Error, ErrorKind};
use crate::{JoinHandle, Process};

/// A started worker: the pool's end of its connection, and its process.
pub(crate) type Started = (Arc<dyn Link>, Box<dyn WorkerProc>);

/// Starts workers.
pub(crate) trait Launch: Send + Sync + fmt::Debug {
    /// Called once, by [`PoolBuilder::build`](super::PoolBuilder::build),
    /// before anything else: starts what the workers need (a cluster's
    /// job step).
    fn prepare(&mut self) -> Result<(), Error> {
        Ok(())
    }
    /// Starts one worker and returns the pool's end of its connection.
    fn launch(&self, boot: Boot) -> Result<Started, Error>;
    /// How many workers the pool has, when the launcher decides it (a
    /// cluster's allocation) rather than [`PoolBuilder::processes`](super::PoolBuilder::processes).
    fn processes(&self) -> Option<usize> {
        None
    }
    /// Whether the workers are on other machines: then no argument may
    /// hold a handle (they cannot cross), and lost workers are not
    /// replaced.
    fn remote(&self) -> bool {
        false
    }
}

/// Where a [`Pool`](crate::Pool)'s workers run: given to
/// [`PoolBuilder::launcher`](crate::PoolBuilder::launcher). Made from a
/// cluster launcher such as [`cluster::Slurm`](crate::cluster::Slurm).
pub struct Launcher(pub(crate) Box<dyn Launch>);

impl fmt::Debug for Launcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What tells a waiting thread that a worker's process has exited.
pub(crate) enum ExitWatch {
    /// Readable once it has exited (a copy of its pidfd).
    Fd(OwnedFd),
    /// Whether it still runs, asked now and then (no pidfd).
    Ask(Box<dyn Fn() -> bool + Send>),
    /// Nothing: a worker on another machine.
    Unknown,
}

/// A started worker, as the pool sees its process.
pub(crate) trait WorkerProc: Send + fmt::Debug {
    /// Names the worker in errors: `pool worker 'PoolWorker-3' (pid 1234)`.
    fn describe(&self) -> String;
    /// Kills it at once (`SIGKILL`). A no-op once it has exited.
    fn kill(&self);
    /// What says that the process has exited, for a thread that waits on
    /// its connection too: a process it forked may hold that connection
    /// open after it is gone. [`ExitWatch::Unknown`] for a worker on
    /// another machine: then only the connection's end does.
    fn exit_watch(&self) -> ExitWatch {
        ExitWatch::Unknown
    }
    /// Waits for it to exit (after its connection or its `exit_fd`
    /// reported it gone) and
    /// says how it ended: `Ok` for a clean exit, else the error `join`
    /// gives (signal, exit code).
    fn wait(self: Box<Self>) -> Result<(), Error>;
}

/// Re-executes this binary for each worker (`StartMethod::Spawn`).
#[derive(Debug, Default)]
pub(crate) struct SpawnLauncher {
    /// `None`: the process-wide default.
    pub(crate) method: Option<crate::StartMethod>,
}

static WORKERS: AtomicU64 = AtomicU64::new(1);

impl Launch for SpawnLauncher {
    fn launch(&self, boot: Boot) -> Result<Started, Error> {
        let (ours, theirs) = Pipe::<Msg>::duplex()?;
        // Before the worker starts: nothing to undo if its writer cannot.
        let link: Arc<dyn Link> = QueuedConnection::new(ours)?;
        let name = format!("PoolWorker-{}", WORKERS.fetch_add(1, Ordering::Relaxed));
        let mut process = Process::new(super::worker::pool_worker {}, (theirs, boot))
            .name(name)
            .daemon(true);
        if let Some(method) = self.method {
            process = process.start_method(method);
        }
        let handle = process.start()?;
        Ok((link, Box::new(SpawnedWorker(handle))))
    }
}

#[derive(Debug)]
struct SpawnedWorker(JoinHandle<()>);

/// How long a worker whose connection closed may take to exit before it is
/// killed (it closes it only by exiting, so this is a bound, not a wait).
const EXIT_GRACE: Duration = Duration::from_secs(10);

impl WorkerProc for SpawnedWorker {
    fn describe(&self) -> String {
        format!("pool worker '{}' (pid {})", self.0.name(), self.0.pid())
    }

    fn kill(&self) {
        let _ = self.0.kill();
    }

    fn exit_watch(&self) -> ExitWatch {
        match self.0.exit_fd().map(|fd| fd.try_clone_to_owned()) {
            Some(Ok(fd)) => ExitWatch::Fd(fd),
            // No pidfd (or no copy of it): ask whether it still runs.
            _ => {
                let child = self.0.child();
                ExitWatch::Ask(Box::new(move || child.is_running()))
            }
        }
    }

    fn wait(self: Box<Self>) -> Result<(), Error> {
        let mut handle = self.0;
        match handle.join_timeout(EXIT_GRACE) {
            Ok(Some(())) => Ok(()),
            Ok(None) => {
                let _ = handle.kill();
                handle.join().and_then(|()| {
                    Err(task::error(
                        ErrorKind::Disconnected,
                        "the worker closed its connection but did not exit",
                    ))
                })
            }
            Err(e) => Err(e),
        }
    }
}
