//! Resource hygiene over many spawns. Its own test binary, so no other test
//! opens descriptors or spawns children while it counts.

use std::collections::HashSet;

use multiproc::{process_entry, spawn};

#[process_entry]
fn add(a: i32, b: i32) -> i32 {
    a + b
}

fn open_fds() -> HashSet<String> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Children of this process in state Z, from /proc.
fn zombies() -> Vec<u32> {
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
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
        let state = fields.next();
        let ppid: Option<u32> = fields.next().and_then(|p| p.parse().ok());
        if state == Some("Z") && ppid == Some(me) {
            found.push(pid);
        }
    }
    found
}

#[test]
fn a_thousand_spawns_leak_no_fds_and_no_zombies() {
    // Warm up lazily created state (registry, reaper pipe) before counting.
    spawn!(add, 0, 0).unwrap().join().unwrap();
    let before = open_fds();
    for i in 0..1000 {
        assert_eq!(spawn!(add, i, 1).unwrap().join().unwrap(), i + 1);
    }
    let after = open_fds();
    let leaked: Vec<_> = after.difference(&before).collect();
    assert!(leaked.is_empty(), "descriptors leaked: {leaked:?}");
    assert_eq!(zombies(), Vec::<u32>::new());
}
