//! Who holds a lock, and whether that process is still alive.
//!
//! A holder is recorded as its pid (in the futex word) plus a *tag*: the
//! pid and the process start time (`/proc/<pid>/stat`, field 22) packed in
//! 64 bits. The start time tells a dead holder from a new process that
//! reused its pid.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// This process, as lock words and tags record it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ThisProcess {
    pub(crate) pid: u32,
    pub(crate) tag: u64,
}

const START_BITS: u32 = 40;
const START_MASK: u64 = (1 << START_BITS) - 1;

/// Packs a pid and a start time (0 when unknown) into a tag.
pub(crate) fn tag(pid: u32, start: u64) -> u64 {
    (u64::from(pid) << START_BITS) | (start & START_MASK)
}

/// The pid a tag names.
pub(crate) fn tag_pid(tag: u64) -> u32 {
    (tag >> START_BITS) as u32
}

/// This process's tag, once worked out; 0 before (a tag names a pid, which
/// is never 0). Forgotten by [`forget_after_fork`].
static ME: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The calling thread's id, once asked; 0 before.
    static TID: Cell<u32> = const { Cell::new(0) };
}

/// The current process. Cached, and the cache is forgotten in a child the
/// fork server forks (`sys::fork`), which would otherwise carry the server's
/// pid. (A process that `fork`s by other means must not use handles from
/// before the fork in the child; multiproc itself never does that.)
pub(crate) fn me() -> ThisProcess {
    let cached = ME.load(Ordering::Relaxed);
    if cached != 0 {
        return ThisProcess {
            pid: tag_pid(cached),
            tag: cached,
        };
    }
    let pid = std::process::id();
    let start = match read_stat(pid) {
        Ok(Some(stat)) => stat.start,
        _ => 0,
    };
    let tag = tag(pid, start);
    ME.store(tag, Ordering::Relaxed);
    ThisProcess { pid, tag }
}

/// The calling thread's kernel thread id (`gettid`), cached per thread.
pub(crate) fn tid() -> u32 {
    TID.with(|tid| {
        if tid.get() == 0 {
            tid.set(rustix::thread::gettid().as_raw_pid() as u32);
        }
        tid.get()
    })
}

/// Forgets the cached pid, tag and thread id: called in a freshly forked
/// child (on its only thread, the one that forked), where they are the
/// forking process's.
pub(crate) fn forget_after_fork() {
    ME.store(0, Ordering::Relaxed);
    TID.with(|tid| tid.set(0));
}

struct Stat {
    state: u8,
    start: u64,
}

/// `Ok(None)`: there is no such process.
fn read_stat(pid: u32) -> std::io::Result<Option<Stat>> {
    let text = match std::fs::read(format!("/proc/{pid}/stat")) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    parse_stat(&text)
        .map(Some)
        .ok_or_else(|| std::io::Error::other("unparsable /proc/<pid>/stat"))
}

/// `pid (comm) state ppid … starttime …`: the command may contain spaces and
/// parentheses, so fields are counted from the last `)`.
fn parse_stat(text: &[u8]) -> Option<Stat> {
    let close = text.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&text[close + 1..]).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let state = *fields.next()?.as_bytes().first()?;
    // Field 3 is the state; field 22 the start time, 19 fields further.
    let start = fields.nth(18)?.parse().ok()?;
    Some(Stat { state, start })
}

/// Whether the process `pid`, recorded with `tag`, has died (exited, been
/// killed, or is a zombie no one has reaped yet), or its pid now belongs to
/// another process.
///
/// Errs on the side of "alive": when nothing can be learnt, waiting on is
/// the safe choice. The tag may be stale (a holder writes it just after
/// taking the word), so it only counts when it names the same pid.
pub(crate) fn is_dead(pid: u32, tag: u64) -> bool {
    if pid == 0 {
        return false;
    }
    if pid == me().pid {
        return false;
    }
    match read_stat(pid) {
        Ok(None) => true,
        Ok(Some(stat)) => {
            if matches!(stat.state, b'Z' | b'X' | b'x') {
                return true;
            }
            let recorded = tag & START_MASK;
            tag_pid(tag) == pid && recorded != 0 && stat.start & START_MASK != recorded
        }
        // No /proc: fall back to the signal-0 probe (blind to zombies and reuse).
        Err(_) => match rustix::process::Pid::from_raw(pid as i32) {
            Some(p) => matches!(
                rustix::process::test_kill_process(p),
                Err(rustix::io::Errno::SRCH)
            ),
            None => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_stat_counts_fields_after_the_command() {
        let line = b"4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10\n";
        let stat = parse_stat(line).unwrap();
        assert_eq!(stat.state, b'S');
        assert_eq!(stat.start, 987654);
    }

    #[test]
    fn this_process_is_alive_and_a_missing_one_is_dead() {
        let me = me();
        assert_eq!(tag_pid(me.tag), me.pid);
        assert!(!is_dead(me.pid, me.tag));
        // Above the kernel's largest possible pid (2^22).
        assert!(is_dead(5_000_000, tag(5_000_000, 1)));
    }

    #[test]
    fn a_reused_pid_counts_as_dead() {
        let parent = std::os::unix::process::parent_id();
        let start = read_stat(parent).unwrap().unwrap().start;
        assert!(!is_dead(parent, tag(parent, start)));
        assert!(is_dead(parent, tag(parent, start + 1)));
        // A stale tag of another pid says nothing.
        assert!(!is_dead(parent, tag(parent + 1, start + 1)));
    }
}
