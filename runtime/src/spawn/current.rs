//! Facts about the current process and its children.

use std::sync::OnceLock;

/// The current process, as [`current_process`] describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    name: String,
    pid: u32,
    is_child: bool,
    daemon: bool,
}

impl ProcessInfo {
    /// `MainProcess` in the process that was not started by multiproc;
    /// in a child, the name its parent gave it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether this process was started by multiproc.
    pub fn is_child(&self) -> bool {
        self.is_child
    }

    /// Whether this process is a daemon child (Python's
    /// `current_process().daemon`). A daemon may not start children.
    pub fn is_daemon(&self) -> bool {
        self.daemon
    }
}

/// This child's name and daemon flag, as its parent gave them.
static CHILD: OnceLock<(String, bool)> = OnceLock::new();

/// This child's place in the tree of processes: `[]` in the main process,
/// `[3]` in its third child, `[3, 1]` in that child's first, ….
static IDENTITY: OnceLock<Vec<u64>> = OnceLock::new();

pub(crate) fn set_child(name: String, daemon: bool) {
    let _ = CHILD.set((name, daemon));
}

pub(crate) fn set_identity(identity: Vec<u64>) {
    let _ = IDENTITY.set(identity);
}

/// This process's place in the tree of processes, for its children's.
pub(crate) fn identity() -> &'static [u64] {
    IDENTITY.get().map_or(&[], Vec::as_slice)
}

/// Whether this process is a daemon child.
pub(crate) fn is_daemon() -> bool {
    CHILD.get().is_some_and(|(_, daemon)| *daemon)
}

/// Describes the current process (Python's `multiprocessing.current_process()`).
///
/// ```
/// let me = multiproc::current_process();
/// assert_eq!(me.name(), "MainProcess");
/// assert_eq!(me.pid(), std::process::id());
/// assert!(!me.is_child());
/// ```
pub fn current_process() -> ProcessInfo {
    match CHILD.get() {
        Some((name, daemon)) => ProcessInfo {
            name: name.clone(),
            pid: std::process::id(),
            is_child: true,
            daemon: *daemon,
        },
        None => ProcessInfo {
            name: "MainProcess".to_string(),
            pid: std::process::id(),
            is_child: false,
            daemon: false,
        },
    }
}

/// In a child forked by the fork server: the process that asked for it.
static STARTED_BY: OnceLock<u32> = OnceLock::new();

pub(crate) fn set_started_by(pid: u32) {
    let _ = STARTED_BY.set(pid);
}

/// The parent's process id: the process that started this one.
///
/// That is `getppid`, except in a child started with
/// [`StartMethod::ForkServer`](crate::StartMethod::ForkServer), whose
/// kernel parent is the fork server: there it is the process that asked
/// the server for it (as Python's `parent_process()`), fixed at start.
pub fn parent_pid() -> u32 {
    match STARTED_BY.get() {
        Some(&pid) => pid,
        None => std::os::unix::process::parent_id(),
    }
}

/// The number of CPUs this process may run on (at least 1).
pub fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A live child, as [`active_children`] lists it: its pid and name, as
/// fields or through the methods of the same names.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChildInfo {
    /// The child's process id.
    pub pid: u32,
    /// The child's name.
    pub name: String,
}

impl ChildInfo {
    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The child's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The children of this process that are still running, joined or not
/// (as Python's `active_children()`, it reaps those that have ended).
pub fn active_children() -> Vec<ChildInfo> {
    super::reaper::live()
        .into_iter()
        .map(|c| ChildInfo {
            pid: c.pid,
            name: c.name.clone(),
        })
        .collect()
}
