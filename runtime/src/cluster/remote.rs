//! Workers on other machines: the process that starts them (a cluster's
//! launcher, such as `srun`), the TCP connections they make back, and the
//! entry each of them runs.

use std::collections::VecDeque;
use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::net::{self, auth};
use crate::pool::internals::{Boot, Hello, Link, Msg, Started, TcpLink, WorkerProc, serve};
use crate::sys::signal::{ProcessRef, Sig};
use crate::{Entry, Error, ErrorKind, RecvError};
use multiproc_macros::process_entry;

/// The variables a worker finds its way back by (besides the boot marker).
const PORT_ENV: &str = "__MULTIPROC_CLUSTER_PORT";
const HOST_ENV: &str = "__MULTIPROC_CLUSTER_HOST";
const KEY_ENV: &str = "__MULTIPROC_CLUSTER_KEY";
const LIVENESS_ENV: &str = "__MULTIPROC_CLUSTER_LIVENESS_MS";

/// Where the launcher says a task can reach the host it was launched from.
const LAUNCH_HOST_ENVS: [&str; 2] = ["SLURM_LAUNCH_NODE_IPADDR", "SLURM_SRUN_COMM_HOST"];

/// The largest `Hello` taken from a worker (a host name and a few numbers
/// take far less): a connection that announces more is dropped before any
/// of it is read.
const MAX_HELLO: u64 = 64 << 10;

/// The last lines of the launcher's standard error kept for an error.
const TAIL_LINES: usize = 12;
const TAIL_LINE_MAX: usize = 500;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn error(kind: ErrorKind, message: impl Into<String>) -> Error {
    Error::new(kind, message)
}

/// How the workers are to be reached and watched.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// What the pool listens on (`None`: every address, a free port).
    pub(crate) bind: Option<String>,
    /// The host the workers dial (`None`: what the launcher tells them).
    pub(crate) connect_back: Option<String>,
    /// How long the workers may take to connect back, all of them.
    pub(crate) start_timeout: Duration,
    /// How soon a silent peer is declared lost.
    pub(crate) node_timeout: Duration,
}

/// A worker that connected back and proved the key.
#[derive(Debug)]
struct Arrived {
    link: Arc<TcpLink>,
    hello: Hello,
}

enum Event {
    Arrived(Arrived),
    /// The launcher exited; how, and the last of what it said.
    Ended(String),
}

/// How the launcher process ended, once it has.
#[derive(Debug, Default)]
struct Exit {
    status: Mutex<Option<String>>,
    done: Condvar,
}

impl Exit {
    fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut status = lock(&self.status);
        while status.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            status = self
                .done
                .wait_timeout(status, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

/// The last lines of the launcher's standard error, as they come.
#[derive(Debug, Default)]
struct Said {
    tail: Mutex<(VecDeque<String>, bool)>,
    /// Notified when the standard error ends.
    ended: Condvar,
}

/// How long the lines a launcher wrote before it exited are waited for,
/// once it has, if its standard error has not ended (a process it left
/// running holds it): they are in the pipe already, so only as long as
/// the reading thread may take to be scheduled.
const SAID_GRACE: Duration = Duration::from_millis(500);

impl Said {
    /// Copies `stderr` to this process's standard error, keeping the last
    /// lines, until it ends.
    fn read(&self, stderr: impl std::io::Read) {
        for line in BufReader::new(stderr).split(b'\n') {
            let Ok(line) = line else { break };
            let mut out = std::io::stderr().lock();
            let _ = out.write_all(&line);
            let _ = out.write_all(b"\n");
            drop(out);
            let mut text = String::from_utf8_lossy(&line).into_owned();
            if text.len() > TAIL_LINE_MAX {
                let mut cut = TAIL_LINE_MAX;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
            }
            let mut tail = lock(&self.tail);
            if tail.0.len() == TAIL_LINES {
                tail.0.pop_front();
            }
            tail.0.push_back(text);
        }
        self.finish();
    }

    /// The standard error ended.
    fn finish(&self) {
        lock(&self.tail).1 = true;
        self.ended.notify_all();
    }

    /// The last lines said, once the launcher has exited: after the end of
    /// its standard error, or [`SAID_GRACE`].
    fn after_exit(&self) -> Vec<String> {
        let tail = self
            .ended
            .wait_timeout_while(lock(&self.tail), SAID_GRACE, |t| !t.1)
            .unwrap_or_else(|p| p.into_inner())
            .0;
        tail.0
            .iter()
            .filter(|l| !l.trim().is_empty())
            .cloned()
            .collect()
    }
}

/// A launcher process (`srun`) and the workers it started, which connected
/// back. Dropping it ends them all.
pub(crate) struct Running {
    what: String,
    total: usize,
    arrived: Mutex<VecDeque<Arrived>>,
    /// Every worker's link, to shut at the end.
    links: Mutex<Vec<Arc<TcpLink>>>,
    launcher: ProcessRef,
    exit: Arc<Exit>,
    /// `(job, step)` of the workers, for a last-resort `scancel`.
    step: Option<(String, String)>,
    stop_accepting: Arc<AtomicBool>,
    listen_addr: SocketAddr,
    /// Every worker connected back (else ending is not worth a wait).
    complete: bool,
}

impl fmt::Debug for Running {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Running")
            .field("launcher", &self.what)
            .field("workers", &self.total)
            .finish_non_exhaustive()
    }
}

impl Running {
    /// Runs `command` (which starts `total` copies of this program on other
    /// machines) and waits until each has connected back and proved the key.
    pub(crate) fn start(
        mut command: Command,
        what: &str,
        total: usize,
        options: &Options,
    ) -> Result<Running, Error> {
        let bind = options.bind.as_deref().unwrap_or("0.0.0.0:0");
        let listener = TcpListener::bind(bind)
            .map_err(|e| Error::io(format!("listening on {bind} for the pool's workers"), e))?;
        let listen_addr = listener
            .local_addr()
            .map_err(|e| Error::io("reading the pool's listening address", e))?;
        let key = auth::fresh_key()?;
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        let (marker_var, marker) =
            crate::spawn::parent::remote_boot_env(<cluster_worker as Entry>::NAME);
        command
            .env(marker_var, marker)
            .env(PORT_ENV, listen_addr.port().to_string())
            .env(KEY_ENV, hex)
            .env(LIVENESS_ENV, options.node_timeout.as_millis().to_string())
            .stdin(Stdio::null())
            .stderr(Stdio::piped());
        match &options.connect_back {
            Some(host) => command.env(HOST_ENV, host),
            None => command.env_remove(HOST_ENV),
        };
        let mut child = command.spawn().map_err(|e| {
            error(
                ErrorKind::Spawn,
                format!("could not run `{what}` (is it installed and on PATH?)"),
            )
            .with_source(e)
        })?;
        let launcher = ProcessRef::new(child.id());
        let exit = Arc::new(Exit::default());
        let (events, arrivals) = mpsc::channel::<Event>();

        // The launcher's standard error goes on to ours, its last lines kept
        // for an error, by one thread; another waits for it to exit. (Its
        // standard error may outlive it, held by a process it left running.)
        let said = Arc::new(Said::default());
        if let Some(stderr) = child.stderr.take() {
            let said = Arc::clone(&said);
            let reader = std::thread::Builder::new()
                .name("multiproc-launcher-err".into())
                .spawn(move || said.read(stderr));
            if let Err(e) = reader {
                let _ = launcher.signal(Sig::Kill);
                let _ = child.wait();
                return Err(Error::io(
                    "starting a thread to read the launcher's output",
                    e,
                ));
            }
        } else {
            said.finish();
        }
        let ended = events.clone();
        let exit_slot = Arc::clone(&exit);
        let what_owned = what.to_string();
        let watcher = std::thread::Builder::new()
            .name("multiproc-launcher".into())
            .spawn(move || {
                let status = match child.wait() {
                    Ok(status) => status.to_string(),
                    Err(e) => format!("could not be waited for: {e}"),
                };
                let said = said.after_exit();
                let summary = if said.is_empty() {
                    format!("`{what_owned}` ended ({status}) and said nothing")
                } else {
                    format!(
                        "`{what_owned}` ended ({status}), saying: {}",
                        said.join(" / ")
                    )
                };
                *lock(&exit_slot.status) = Some(summary.clone());
                exit_slot.done.notify_all();
                let _ = ended.send(Event::Ended(summary));
            });
        if let Err(e) = watcher {
            let _ = launcher.signal(Sig::Kill);
            return Err(Error::io("starting a thread to watch the launcher", e));
        }

        let stop_accepting = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&stop_accepting);
        let liveness = options.node_timeout;
        let accepter = std::thread::Builder::new()
            .name("multiproc-accept".into())
            .spawn(move || accept_workers(listener, key, liveness, stop, events));
        let mut running = Running {
            what: what.to_string(),
            total,
            arrived: Mutex::new(VecDeque::new()),
            links: Mutex::new(Vec::new()),
            launcher,
            exit,
            step: None,
            stop_accepting,
            listen_addr,
            complete: false,
        };
        if let Err(e) = accepter {
            return Err(Error::io("starting a thread to accept workers", e));
        }

        let deadline = Instant::now() + options.start_timeout;
        let mut arrived = VecDeque::new();
        while arrived.len() < total {
            let left = deadline.saturating_duration_since(Instant::now());
            match arrivals.recv_timeout(left) {
                Ok(Event::Arrived(worker)) => {
                    // The same process again (it connected back twice):
                    // one worker is one connection, the first.
                    if arrived
                        .iter()
                        .any(|w: &Arrived| w.hello.same_worker(&worker.hello))
                    {
                        worker.link.shut();
                        continue;
                    }
                    lock(&running.links).push(Arc::clone(&worker.link));
                    arrived.push_back(worker);
                }
                Ok(Event::Ended(summary)) => {
                    return Err(error(
                        ErrorKind::Spawn,
                        format!(
                            "the cluster did not start the pool's workers \
                             ({} of {total} connected back): {summary}",
                            arrived.len()
                        ),
                    ));
                }
                Err(_) => {
                    let reach = match &options.connect_back {
                        Some(host) => format!("{host}:{}", listen_addr.port()),
                        None => format!(
                            "the launch host's address (as {}) and port {}",
                            LAUNCH_HOST_ENVS.join(" or "),
                            listen_addr.port()
                        ),
                    };
                    return Err(error(
                        ErrorKind::Timeout,
                        format!(
                            "only {} of {total} workers connected back within {:?}: can the \
                             nodes reach {reach}? (set the address with `connect_back`, or \
                             allow more time with `start_timeout`)",
                            arrived.len(),
                            options.start_timeout
                        ),
                    ));
                }
            }
        }
        running.stop_accepting();
        running.complete = true;
        running.step = agreed_step(arrived.iter().map(|w| &w.hello));
        *lock(&running.arrived) = arrived;
        Ok(running)
    }

    pub(crate) fn total(&self) -> usize {
        self.total
    }

    /// Hands out the next worker that connected back, telling it how to
    /// start.
    pub(crate) fn launch(&self, boot: Boot) -> Result<Started, Error> {
        let Some(worker) = lock(&self.arrived).pop_front() else {
            return Err(error(
                ErrorKind::Spawn,
                format!(
                    "a cluster pool does not replace lost workers (its {} were started \
                     together by `{}`)",
                    self.total, self.what
                ),
            ));
        };
        worker.link.send(&Msg::Boot(boot))?;
        let link: Arc<dyn Link> = Arc::clone(&worker.link) as Arc<dyn Link>;
        Ok((
            link,
            Box::new(RemoteWorker {
                link: worker.link,
                hello: worker.hello,
            }),
        ))
    }

    fn stop_accepting(&self) {
        if self.stop_accepting.swap(true, Ordering::AcqRel) {
            return;
        }
        // Wake the accepting thread with a connection of our own.
        let ip = match self.listen_addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let _ = TcpStream::connect_timeout(
            &SocketAddr::new(ip, self.listen_addr.port()),
            Duration::from_secs(1),
        );
    }
}

/// How long the launcher gets to exit after its workers were told to end,
/// before it is signalled.
const END_GRACE: Duration = Duration::from_secs(5);

/// The job step that every worker named, for the last-resort `scancel`:
/// none unless all name the same one and it is a Slurm id (digits), so that
/// one worker's word can neither aim the cancel at another step nor pass
/// `scancel` an option.
fn agreed_step<'a>(hellos: impl IntoIterator<Item = &'a Hello>) -> Option<(String, String)> {
    let named = |h: &Hello| Some((h.job.clone()?, h.step.clone()?));
    let is_id = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let mut hellos = hellos.into_iter();
    let first = named(hellos.next()?)?;
    if !is_id(&first.0) || !is_id(&first.1) {
        return None;
    }
    hellos
        .all(|h| named(h).as_ref() == Some(&first))
        .then_some(first)
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop_accepting();
        for link in lock(&self.links).drain(..) {
            link.shut();
        }
        // Each worker exits when its connection ends; the launcher, once
        // they all have. (Not if some never connected: they will not end.)
        if self.complete && self.exit.wait(END_GRACE) {
            return;
        }
        let _ = self.launcher.signal(Sig::Term);
        if self.exit.wait(END_GRACE / 2) {
            return;
        }
        if let Some((job, step)) = &self.step {
            let _ = Command::new("scancel")
                .arg("--signal=KILL")
                .arg(format!("{job}.{step}"))
                .stdin(Stdio::null())
                .status();
        }
        let _ = self.launcher.signal(Sig::Kill);
        self.exit.wait(END_GRACE / 5);
    }
}

/// Accepts connections until told to stop; each that proves `key` and
/// says who it is becomes an [`Event::Arrived`].
fn accept_workers(
    listener: TcpListener,
    key: [u8; 32],
    liveness: Duration,
    stop: Arc<AtomicBool>,
    events: mpsc::Sender<Event>,
) {
    let handshakes = net::Handshakes::default();
    loop {
        let stream = match net::accept(&listener) {
            Ok(Some(stream)) => stream,
            Ok(None) => continue,
            Err(_) => return,
        };
        if stop.load(Ordering::Acquire) {
            return;
        }
        let Some(pending) = handshakes.begin(&stream) else {
            continue;
        };
        let events = events.clone();
        let _ = std::thread::Builder::new()
            .name("multiproc-handshake".into())
            .spawn(move || {
                let mut stream = stream;
                if net::handshake_as_server(&mut stream, &key, Some(liveness)).is_err() {
                    return;
                }
                let _ = stream.set_read_timeout(Some(auth::HANDSHAKE_TIMEOUT));
                let Ok(link) = TcpLink::queued(stream) else {
                    return;
                };
                let hello = match link.recv_at_most(MAX_HELLO) {
                    Ok(Msg::Hello(hello)) => hello,
                    _ => return,
                };
                link.set_read_timeout(None);
                // Cut short for a newer connection: the socket is shut down.
                if !pending.finish() {
                    return;
                }
                if let Err(mpsc::SendError(Event::Arrived(late))) =
                    events.send(Event::Arrived(Arrived { link, hello }))
                {
                    late.link.shut();
                }
            });
    }
}

/// A worker on another machine, as the pool sees it.
#[derive(Debug)]
struct RemoteWorker {
    link: Arc<TcpLink>,
    hello: Hello,
}

impl WorkerProc for RemoteWorker {
    fn describe(&self) -> String {
        let task = self
            .hello
            .rank
            .map(|r| format!(", task {r}"))
            .unwrap_or_default();
        format!(
            "pool worker on {} (pid {}{task})",
            self.hello.host, self.hello.pid
        )
    }

    fn kill(&self) {
        // The worker ends itself when its connection does.
        self.link.shut();
    }

    fn wait(self: Box<Self>) -> Result<(), Error> {
        let why = self.link.broken().unwrap_or_else(|| {
            "closed from its side: the process ended (killed, or crashed)".to_string()
        });
        Err(error(
            ErrorKind::Disconnected,
            format!("its connection was lost: {why}"),
        ))
    }
}

/// The entry a worker on another machine runs: reads how to reach its pool
/// from the environment, connects back, proves the key, and serves tasks
/// until its pool is done with it.
#[process_entry]
pub(crate) fn cluster_worker() {
    let var = |k: &str| std::env::var(k).ok();
    let port = var(PORT_ENV);
    let key = var(KEY_ENV);
    let host = var(HOST_ENV).or_else(|| LAUNCH_HOST_ENVS.iter().find_map(|k| var(k)));
    let liveness = var(LIVENESS_ENV)
        .and_then(|ms| ms.parse::<u64>().ok())
        .map(Duration::from_millis);
    for k in [PORT_ENV, KEY_ENV, HOST_ENV, LIVENESS_ENV] {
        // Still before any thread: this entry runs before `main`.
        crate::sys::remove_env_before_main(k);
    }
    let fail = |why: String| -> ! {
        eprintln!(
            "multiproc: cluster worker on {}: {why}",
            crate::sys::signal::hostname()
        );
        std::process::exit(crate::pool::internals::EXIT_ABANDONED);
    };
    let (Some(port), Some(key), Some(host)) = (port, key, host) else {
        fail("started without the address and key of its pool".into());
    };
    // An empty key would prove nothing (the pool never makes one).
    let Some(key) = parse_hex(&key).filter(|key| !key.is_empty()) else {
        fail("the pool's key is malformed".into());
    };
    let addr = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let stream = match net::dial(&addr, &key, "its pool", liveness) {
        Ok(stream) => stream,
        Err(e) => fail(e.to_string()),
    };
    let link = match TcpLink::new(stream) {
        Ok(link) => link,
        Err(e) => fail(e.to_string()),
    };
    let env_u64 = |k: &str| var(k).and_then(|v| v.parse().ok());
    let hello = Hello {
        host: crate::sys::signal::hostname(),
        pid: std::process::id(),
        rank: env_u64("SLURM_PROCID"),
        job: var("SLURM_JOB_ID"),
        step: var("SLURM_STEP_ID"),
    };
    // As a local worker is named (`PoolWorker-N`), by its task number.
    let name = match hello.rank {
        Some(rank) => format!("PoolWorker-{rank}@{}", hello.host),
        None => format!("PoolWorker@{}", hello.host),
    };
    crate::spawn::current::set_child(name, false);
    if link.send(&Msg::Hello(hello)).is_err() {
        return;
    }
    match link.recv() {
        Ok(Msg::Boot(boot)) => serve(link as Arc<dyn Link>, boot, true),
        // The pool ended before it needed this worker.
        Err(RecvError::Disconnected) | Ok(Msg::Stop) => {}
        Ok(_) | Err(RecvError::Failed(_)) => fail("its pool sent something unexpected".into()),
    }
}

fn parse_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(pid: u32, job: &str, step: &str) -> Hello {
        Hello {
            host: "n1".into(),
            pid,
            rank: Some(u64::from(pid)),
            job: Some(job.into()),
            step: Some(step.into()),
        }
    }

    #[test]
    fn the_step_to_cancel_is_one_every_worker_names() {
        let agreed = [hello(1, "42", "0"), hello(2, "42", "0")];
        assert_eq!(agreed_step(&agreed), Some(("42".into(), "0".into())));
        // One worker naming another step (or none) means no cancel at all.
        let split = [hello(1, "42", "0"), hello(2, "7", "0")];
        assert_eq!(agreed_step(&split), None);
        let mut unnamed = hello(2, "42", "0");
        unnamed.step = None;
        assert_eq!(agreed_step(&[hello(1, "42", "0"), unnamed]), None);
        // Not a Slurm id: never handed to scancel, which would read an option.
        assert_eq!(agreed_step(&[hello(1, "--user=alice", "0")]), None);
        assert_eq!(agreed_step(&[hello(1, "42", "")]), None);
        assert_eq!(agreed_step(&[]), None);
    }
}
