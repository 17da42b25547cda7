//! How children are started: [`StartMethod`], the process-wide default and
//! the `MULTIPROC_START_METHOD` variable that sets it.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::error::{Error, ErrorKind};

/// How a child process is started (Python's start methods).
///
/// Both give the same entries, results, errors and [`JoinHandle`](crate::JoinHandle)
/// (pid, exit code, terminate, kill, daemon). They differ in cost and in
/// what the child starts from:
///
/// - `Spawn` re-executes this binary for each child (about 1 ms). The child
///   starts from the parent's environment and working directory at the
///   time of the start.
/// - `ForkServer` starts one server on first use: this binary, held before
///   `main` with a single thread. Each child is forked from it (a fraction
///   of a millisecond). The child starts from the *server's* environment,
///   working directory, stdout/stderr and other process attributes (umask,
///   resource limits, ignored signals), which are the parent's as they were
///   when the server started; later changes in the parent are not seen (as
///   with Python's `forkserver`). Its kernel parent is the server;
///   [`parent_pid`](crate::parent_pid) still names this process. The server
///   dies with this process, and its daemon children die with it. Once idle
///   for a millisecond, the server keeps one child forked ahead (a spare,
///   listed by `ps` as the server's child); the next start goes straight to
///   it (about 0.1 ms to start and join a trivial entry, on a quiet
///   2-CPU machine). While starts come in quick succession it keeps two,
///   forked as children end (0.24–0.30 ms per start and join back to
///   back).
///
/// ```
/// use multiproc::{entry, process_entry, Process, StartMethod};
///
/// #[process_entry]
/// fn double(x: u64) -> u64 { x * 2 }
///
/// # fn main() -> multiproc::Result<()> {
/// # if !multiproc::get_all_start_methods().contains(&StartMethod::ForkServer) {
/// #     println!("skipped: the fork server needs pidfds, which this system does not give");
/// #     return Ok(());
/// # }
/// let child = Process::new(entry!(double), (21,))
///     .start_method(StartMethod::ForkServer)
///     .start()?;
/// assert_eq!(child.join()?, 42);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum StartMethod {
    /// Re-execute this binary for each child (the default).
    #[default]
    Spawn,
    /// Fork each child from a server started on first use.
    ForkServer,
}

/// The environment variable that sets the default start method for a
/// program that does not call [`set_start_method`].
pub(crate) const START_METHOD_ENV: &str = "MULTIPROC_START_METHOD";

const UNSET: u8 = 0;
const SPAWN: u8 = 1;
const FORK_SERVER: u8 = 2;

/// Set by `set_start_method`; `UNSET` defers to the environment.
static DEFAULT: AtomicU8 = AtomicU8::new(UNSET);

/// What `MULTIPROC_START_METHOD` says, read once.
fn from_env() -> &'static Result<StartMethod, String> {
    static FROM_ENV: OnceLock<Result<StartMethod, String>> = OnceLock::new();
    FROM_ENV.get_or_init(|| match std::env::var(START_METHOD_ENV) {
        Err(std::env::VarError::NotPresent) => Ok(StartMethod::Spawn),
        Ok(value) => match value.trim() {
            "" | "spawn" => Ok(StartMethod::Spawn),
            "forkserver" => Ok(StartMethod::ForkServer),
            other => Err(format!(
                "{START_METHOD_ENV}=`{other}` is not a start method (expected `spawn` or `forkserver`)"
            )),
        },
        Err(std::env::VarError::NotUnicode(_)) => Err(format!(
            "{START_METHOD_ENV} is not UTF-8 (expected `spawn` or `forkserver`)"
        )),
    })
}

/// Sets the start method of every later start that does not choose one
/// with [`Process::start_method`](crate::Process::start_method). It
/// overrides `MULTIPROC_START_METHOD`, and may be called again.
///
/// Fails, changing nothing, for `ForkServer` on a kernel without pidfds
/// (Linux before 5.4), which the fork server needs.
///
/// ```
/// use multiproc::{get_start_method, set_start_method, StartMethod};
///
/// # fn main() -> multiproc::Result<()> {
/// # if !multiproc::get_all_start_methods().contains(&StartMethod::ForkServer) {
/// #     println!("skipped: the fork server needs pidfds, which this system does not give");
/// #     return Ok(());
/// # }
/// set_start_method(StartMethod::ForkServer)?;
/// assert_eq!(get_start_method(), StartMethod::ForkServer);
/// # Ok(())
/// # }
/// ```
pub fn set_start_method(method: StartMethod) -> Result<(), Error> {
    check_supported(method)?;
    let value = match method {
        StartMethod::Spawn => SPAWN,
        StartMethod::ForkServer => FORK_SERVER,
    };
    DEFAULT.store(value, Ordering::Release);
    Ok(())
}

/// The default start method: as last set by [`set_start_method`], else as
/// `MULTIPROC_START_METHOD` says (`spawn` or `forkserver`), else
/// [`StartMethod::Spawn`]. (With a value of the variable that names no
/// method, this says `Spawn` and every start that uses the default fails,
/// naming the variable.)
pub fn get_start_method() -> StartMethod {
    resolve(None).unwrap_or_default()
}

/// The start methods this system can use, the default ([`StartMethod::Spawn`])
/// first, as Python's `multiprocessing.get_all_start_methods`.
/// [`StartMethod::ForkServer`] is listed only where the kernel has pidfds
/// (Linux 5.4 or later, and not refused by a seccomp profile): elsewhere
/// starts that ask for it fail with kind `Spawn`.
///
/// ```
/// use multiproc::{get_all_start_methods, StartMethod};
///
/// let methods = get_all_start_methods();
/// assert_eq!(methods[0], StartMethod::Spawn);
/// if !methods.contains(&StartMethod::ForkServer) {
///     println!("no fork server here: this kernel has no pidfds");
/// }
/// ```
pub fn get_all_start_methods() -> Vec<StartMethod> {
    [StartMethod::Spawn, StartMethod::ForkServer]
        .into_iter()
        .filter(|&method| check_supported(method).is_ok())
        .collect()
}

/// The method a start uses: the one it asked for, or the default.
pub(crate) fn resolve(requested: Option<StartMethod>) -> Result<StartMethod, Error> {
    if let Some(method) = requested {
        return Ok(method);
    }
    match DEFAULT.load(Ordering::Acquire) {
        SPAWN => Ok(StartMethod::Spawn),
        FORK_SERVER => Ok(StartMethod::ForkServer),
        _ => from_env()
            .clone()
            .map_err(|message| Error::new(ErrorKind::Spawn, message)),
    }
}

/// `Err` for a method this kernel cannot do.
pub(crate) fn check_supported(method: StartMethod) -> Result<(), Error> {
    if method == StartMethod::ForkServer && !super::reaper::pidfd_supported() {
        return Err(Error::new(
            ErrorKind::Spawn,
            "the fork server needs pidfds (Linux 5.4 or later)",
        ));
    }
    Ok(())
}
