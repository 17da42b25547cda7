//! How workers are started and reached. One way today (re-executing this
//! binary, `StartMethod::Spawn`); the fork server and cluster launchers are
//! to be further implementations of [`Launcher`].

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::proto::Msg;
use super::task;
use super::worker::Boot;
use crate::{Connection, Pipe};
use crate::{Error, ErrorKind};
use crate::{JoinHandle, Process};

/// Starts one worker and returns the pool's end of its connection.
pub(crate) trait Launcher: Send + Sync + fmt::Debug {
    fn launch(&self, boot: Boot) -> Result<(Connection<Msg>, Box<dyn WorkerProc>), Error>;
}

/// A started worker, as the pool sees its process.
pub(crate) trait WorkerProc: Send + fmt::Debug {
    /// Names the worker in errors: `pool worker 'PoolWorker-3' (pid 1234)`.
    fn describe(&self) -> String;
    /// Kills it at once (`SIGKILL`). A no-op once it has exited.
    fn kill(&self);
    /// Waits for it to exit (after its connection reported it gone) and
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

impl Launcher for SpawnLauncher {
    fn launch(&self, boot: Boot) -> Result<(Connection<Msg>, Box<dyn WorkerProc>), Error> {
        let (ours, theirs) = Pipe::<Msg>::duplex()?;
        let name = format!("PoolWorker-{}", WORKERS.fetch_add(1, Ordering::Relaxed));
        let mut process = Process::new(super::worker::pool_worker {}, (theirs, boot))
            .name(name)
            .daemon(true);
        if let Some(method) = self.method {
            process = process.start_method(method);
        }
        let handle = process.start()?;
        Ok((ours, Box::new(SpawnedWorker(handle))))
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
