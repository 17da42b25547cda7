//! How a child reports its panic on stderr: one line that names the
//! process and entry instead of std's `thread '<unnamed>'`, then the
//! message and the trimmed backtrace (the error the parent gets carries the
//! same report, but its `Display` does not repeat the backtrace); and which
//! panic that report names ([`report`]).

use std::cell::Cell;
use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::thread::ThreadId;

use crate::error::PanicReport;

/// The thread that runs the entry (the one that installed the hook).
static ENTRY_THREAD: OnceLock<ThreadId> = OnceLock::new();

/// Marks the calling thread as the one that runs the entry.
pub(super) fn entry_thread_is_this_one() {
    let _ = ENTRY_THREAD.set(std::thread::current().id());
}

thread_local! {
    /// The task a pool worker runs on this thread, if any: a panic then
    /// names it rather than the worker's own entry. (Set once per chunk:
    /// a thread-local costs the worker's loop nothing to speak of.)
    static TASK: Cell<Option<&'static str>> = const { Cell::new(None) };
}

/// Says which task entry this thread runs now (`None`: none).
pub(crate) fn running_task(entry: Option<&'static str>) {
    TASK.with(|t| t.set(entry));
}

/// The report of an entry's panic: what the panic hook `recorded` (with
/// its location and backtrace), unless the payload's `message` says it was
/// another panic (one caught and recovered from earlier, or on another
/// thread), or no hook recorded any; then the payload's message alone.
pub(crate) fn report(recorded: Option<PanicReport>, message: Option<String>) -> PanicReport {
    match (recorded, message) {
        (Some(report), Some(message)) if report.message != message => PanicReport {
            message,
            location: None,
            backtrace: None,
        },
        (Some(report), _) => report,
        (None, message) => PanicReport {
            message: message.unwrap_or_else(|| "Box<dyn Any>".into()),
            location: None,
            backtrace: None,
        },
    }
}

/// Prints `report` as std's hook would, naming the process and entry.
pub(super) fn print(report: &PanicReport, entry: &str) {
    let me = super::current::current_process();
    let process = format!("process '{}' (pid {})", me.name(), me.pid());
    let thread = std::thread::current();
    let task = TASK.with(Cell::get);
    let who = if ENTRY_THREAD.get() == Some(&thread.id()) {
        match task {
            Some(task) => format!("{process} task `{task}`"),
            None => format!("{process} entry `{entry}`"),
        }
    } else {
        let name = thread.name().unwrap_or("<unnamed>");
        format!("thread '{name}' of {process} entry `{entry}`")
    };
    let mut out = format!("{who} panicked");
    if let Some(location) = &report.location {
        out += &format!(" at {location}");
    }
    out += &format!(":\n{}\n", report.message);
    static NOTED: AtomicBool = AtomicBool::new(false);
    match &report.backtrace {
        Some(backtrace) => out += &format!("stack backtrace:\n{backtrace}"),
        None if backtrace_off() && !NOTED.swap(true, Relaxed) => {
            out +=
                "note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        }
        None => {}
    }
    let _ = std::io::stderr().lock().write_all(out.as_bytes());
}

fn backtrace_off() -> bool {
    std::env::var_os("RUST_BACKTRACE").is_none_or(|v| v == "0")
}
