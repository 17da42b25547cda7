//! [`Slurm`]: a pool's workers started by `srun`.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::remote::{Options, Running};
use crate::pool::internals::{Boot, Launch, Started};
use crate::{Error, ErrorKind, Launcher};

/// Runs a [`Pool`](crate::Pool)'s workers as the tasks of a Slurm job
/// step, started by `srun`: give it to
/// [`PoolBuilder::launcher`](crate::PoolBuilder::launcher).
///
/// Inside an allocation (`sbatch`, `salloc`: `SLURM_JOB_ID` is set) the
/// step runs in it; outside one, `srun` asks for an allocation of its own
/// with `--immediate`, so that a request the cluster cannot meet now is an
/// error at [`build`](crate::PoolBuilder::build), never an endless wait in
/// the queue.
///
/// The workers connect back to this process over TCP: the nodes must be
/// able to reach this host. By default they dial the address `srun` tells
/// each task it was launched from (`SLURM_LAUNCH_NODE_IPADDR`); set another
/// with [`connect_back`](Slurm::connect_back). Each pool makes a fresh key,
/// which the workers get in their environment (Slurm passes the submitting
/// environment on, unless `--export` says otherwise: keep
/// `--export=ALL`, the default) and both sides prove before anything is
/// read.
///
/// ```no_run
/// use multiproc::{entry, process_entry, Pool};
/// use multiproc::cluster::Slurm;
/// use std::time::Duration;
///
/// #[process_entry]
/// fn host() -> String {
///     std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default()
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let pool = Pool::builder()
///     .launcher(
///         Slurm::new()
///             .nodes(4)
///             .tasks_per_node(2)
///             .partition("debug")
///             .time_limit(Duration::from_secs(3600))
///             .broadcast("/tmp/")          // no shared filesystem: copy the binary
///             .arg("--exclusive"),
///     )
///     .build()?;
/// let hosts: Vec<String> = pool.starmap(entry!(host), vec![(); 8])?;
/// println!("tasks ran on {hosts:?}");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Slurm {
    nodes: Option<u32>,
    tasks_per_node: Option<u32>,
    tasks: Option<u32>,
    partition: Option<String>,
    time_limit: Option<Duration>,
    job_name: String,
    broadcast: Option<PathBuf>,
    args: Vec<OsString>,
    srun: PathBuf,
    immediate: Duration,
    options: Options,
}

impl fmt::Debug for Slurm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slurm")
            .field("nodes", &self.nodes)
            .field("tasks_per_node", &self.tasks_per_node)
            .field("tasks", &self.tasks)
            .field("partition", &self.partition)
            .finish_non_exhaustive()
    }
}

impl Default for Slurm {
    fn default() -> Slurm {
        Slurm::new()
    }
}

impl Slurm {
    /// One task; inside an allocation, its task count (`SLURM_NTASKS`).
    pub fn new() -> Slurm {
        Slurm {
            nodes: None,
            tasks_per_node: None,
            tasks: None,
            partition: None,
            time_limit: None,
            job_name: "multiproc-pool".into(),
            broadcast: None,
            args: Vec::new(),
            srun: PathBuf::from("srun"),
            immediate: Duration::from_secs(30),
            options: Options {
                bind: None,
                connect_back: None,
                start_timeout: Duration::from_secs(120),
                node_timeout: Duration::from_secs(40),
            },
        }
    }

    /// How many nodes (`srun --nodes`).
    pub fn nodes(mut self, nodes: u32) -> Slurm {
        self.nodes = Some(nodes);
        self
    }

    /// Workers on each node (`--ntasks-per-node`); the total is this times
    /// [`nodes`](Self::nodes).
    pub fn tasks_per_node(mut self, tasks: u32) -> Slurm {
        self.tasks_per_node = Some(tasks);
        self
    }

    /// Workers in all (`--ntasks`), wherever Slurm places them.
    pub fn tasks(mut self, tasks: u32) -> Slurm {
        self.tasks = Some(tasks);
        self
    }

    /// The partition (`--partition`).
    pub fn partition(mut self, partition: impl Into<String>) -> Slurm {
        self.partition = Some(partition.into());
        self
    }

    /// The job's time limit (`--time`, in whole minutes, rounded up).
    pub fn time_limit(mut self, limit: Duration) -> Slurm {
        self.time_limit = Some(limit);
        self
    }

    /// The job's name (`--job-name`; default `multiproc-pool`).
    pub fn job_name(mut self, name: impl Into<String>) -> Slurm {
        self.job_name = name.into();
        self
    }

    /// Copies this program to each node before it starts there
    /// (`srun --bcast=<dest>`), for clusters without a shared filesystem.
    /// `dest` is a file path, or a directory ending in `/`.
    pub fn broadcast(mut self, dest: impl Into<PathBuf>) -> Slurm {
        self.broadcast = Some(dest.into());
        self
    }

    /// One more `srun` argument, before the program (`--exclusive`,
    /// `--constraint=…`, `--mem=…`, …).
    pub fn arg(mut self, arg: impl Into<OsString>) -> Slurm {
        self.args.push(arg.into());
        self
    }

    /// More `srun` arguments, as [`arg`](Self::arg).
    pub fn args<I, S>(mut self, args: I) -> Slurm
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// The `srun` program (default: `srun` on `PATH`).
    pub fn srun(mut self, program: impl Into<PathBuf>) -> Slurm {
        self.srun = program.into();
        self
    }

    /// Outside an allocation, how long `srun` may wait for one before the
    /// request fails (`--immediate`; default 30 s).
    pub fn immediate(mut self, wait: Duration) -> Slurm {
        self.immediate = wait;
        self
    }

    /// The host the workers connect back to (a name or address of this
    /// host that the nodes can reach; default: the address `srun` gives
    /// them, `SLURM_LAUNCH_NODE_IPADDR`).
    pub fn connect_back(mut self, host: impl Into<String>) -> Slurm {
        self.options.connect_back = Some(host.into());
        self
    }

    /// The address the pool listens on for its workers (default
    /// `0.0.0.0:0`: every interface, a free port).
    pub fn bind(mut self, addr: impl Into<String>) -> Slurm {
        self.options.bind = Some(addr.into());
        self
    }

    /// How long all the workers may take to start and connect back before
    /// [`build`](crate::PoolBuilder::build) fails (default 120 s).
    pub fn start_timeout(mut self, timeout: Duration) -> Slurm {
        self.options.start_timeout = timeout;
        self
    }

    /// How soon a worker whose node went silent (no answer to TCP
    /// keepalive probes, or data left unacknowledged) is declared lost,
    /// and how soon a worker gives up on a silent pool (default 40 s).
    /// A worker that is only busy is not silent.
    pub fn node_timeout(mut self, timeout: Duration) -> Slurm {
        self.options.node_timeout = timeout;
        self
    }

    /// How many workers: `(total, inside an allocation)`.
    fn total(&self) -> Result<u32, Error> {
        let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u32>().ok());
        let zero = [
            (self.nodes, "nodes"),
            (self.tasks_per_node, "tasks_per_node"),
            (self.tasks, "tasks"),
        ];
        if let Some((_, what)) = zero.iter().find(|(n, _)| *n == Some(0)) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("Slurm::{what}(0): a pool needs at least one worker"),
            ));
        }
        let total = match (self.tasks, self.nodes, self.tasks_per_node) {
            (Some(t), _, _) => t,
            (None, Some(n), k) => n.saturating_mul(k.unwrap_or(1)),
            (None, None, Some(k)) => k.saturating_mul(env("SLURM_JOB_NUM_NODES").unwrap_or(1)),
            (None, None, None) => env("SLURM_NTASKS").unwrap_or(1),
        };
        Ok(total)
    }

    /// The `srun` command line (without its environment).
    fn command(&self, total: u32) -> Result<Command, Error> {
        let exe = std::env::current_exe()
            .map_err(|e| Error::io("finding this program's path for srun", e))?;
        let mut cmd = Command::new(&self.srun);
        let inside = std::env::var_os("SLURM_JOB_ID").is_some();
        cmd.arg(format!("--ntasks={total}"));
        if let Some(n) = self.nodes {
            cmd.arg(format!("--nodes={n}"));
        }
        if let Some(k) = self.tasks_per_node {
            cmd.arg(format!("--ntasks-per-node={k}"));
        }
        if let Some(p) = &self.partition {
            cmd.arg(format!("--partition={p}"));
        }
        if let Some(t) = self.time_limit {
            cmd.arg(format!("--time={}", t.as_secs().div_ceil(60).max(1)));
        }
        if !inside {
            cmd.arg(format!("--immediate={}", self.immediate.as_secs().max(1)));
        }
        if let Some(dest) = &self.broadcast {
            let mut arg = OsString::from("--bcast=");
            arg.push(dest);
            cmd.arg(arg);
        }
        cmd.arg(format!("--job-name={}", self.job_name))
            // A lost node or a dead worker must not end the others.
            .arg("--no-kill")
            .arg("--kill-on-bad-exit=0")
            // Errors only: srun's progress notes are not ours to print.
            .arg("--quiet")
            .args(&self.args)
            .arg(exe);
        Ok(cmd)
    }
}

/// [`Slurm`] as a pool's launcher: runs `srun` when the pool is built.
#[derive(Debug)]
struct SlurmLaunch {
    config: Slurm,
    running: Option<Running>,
}

impl From<Slurm> for Launcher {
    fn from(config: Slurm) -> Launcher {
        Launcher(Box::new(SlurmLaunch {
            config,
            running: None,
        }))
    }
}

impl Launch for SlurmLaunch {
    fn prepare(&mut self) -> Result<(), Error> {
        let total = self.config.total()?;
        let command = self.config.command(total)?;
        self.running = Some(Running::start(
            command,
            "srun",
            total as usize,
            &self.config.options,
        )?);
        Ok(())
    }

    fn launch(&self, boot: Boot) -> Result<Started, Error> {
        match &self.running {
            Some(running) => running.launch(boot),
            None => Err(Error::new(
                ErrorKind::Spawn,
                "the Slurm launcher was not started",
            )),
        }
    }

    fn processes(&self) -> Option<usize> {
        self.running.as_ref().map(Running::total)
    }

    fn remote(&self) -> bool {
        true
    }
}
