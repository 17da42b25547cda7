//! Helpers shared by the integration tests (each test crate includes this
//! module and uses what it needs).

#![allow(dead_code)]

use std::time::{Duration, Instant};

/// How long a test may wait for something that should happen promptly: a
/// failure bound, never a way to synchronise.
pub const BOUND: Duration = Duration::from_secs(20);

/// The scheduler state of process (or thread) `pid` from `/proc/<pid>/stat`
/// (`R`, `S`, `T`, `Z`, …); `None` once it is gone.
pub fn state_of(pid: u32) -> Option<u8> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.rfind(')')?;
    stat.as_bytes().get(after_name + 2).copied()
}

/// Polls a condition that nothing can signal (such as "that process is now
/// asleep inside `put`"), failing the test after [`BOUND`].
pub fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < BOUND, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits until process `pid` sleeps (state `S`), failing after [`BOUND`].
pub fn until_asleep(what: &str, pid: u32) {
    eventually(what, || state_of(pid) == Some(b'S'));
}

/// For a test that only makes sense run by another test in a fresh process
/// (with `var` set): whether to go on. Otherwise it says it was skipped.
pub fn run_by_outer_test(var: &str, outer: &str) -> bool {
    if std::env::var_os(var).is_some() {
        return true;
    }
    println!("skipped: {outer} runs this test in a fresh process (with {var} set)");
    false
}

/// Every process this one can see, from `/proc`: `(pid, state, parent pid)`.
pub fn processes() -> Vec<(u32, u8, u32)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().and_then(|s| s.bytes().next());
        let ppid = fields.next().and_then(|p| p.parse().ok());
        if let (Some(state), Some(ppid)) = (state, ppid) {
            found.push((pid, state, ppid));
        }
    }
    found
}
