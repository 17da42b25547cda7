//! A bounded soak: spawns, pipes, queues and locks churned for a while
//! (`MULTIPROC_SOAK_SECS`, 5 s by default; CI runs 60 s), after which the
//! parent's descriptors, zombies and resident memory are back to where
//! they started.

mod common;

use std::time::{Duration, Instant};

use multiproc::__private::fork_server_drop_spares;
use multiproc::{Connection, Lock, Pipe, Queue, Value, process_entry, spawn};

#[process_entry]
fn churn(conn: Connection<Vec<u64>>, queue: Queue<String>, lock: Lock, counter: Value<u64>) -> u64 {
    let mut sum = 0;
    while let Ok(numbers) = conn.recv() {
        sum += numbers.iter().sum::<u64>();
        queue.put(format!("{sum}")).unwrap();
        let _guard = lock.lock().unwrap();
        *counter.lock().unwrap() += 1;
    }
    sum
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Children of this process that have exited and not been reaped.
fn zombies() -> usize {
    let me = std::process::id();
    common::processes()
        .into_iter()
        .filter(|&(_, state, ppid)| state == b'Z' && ppid == me)
        .count()
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        << 10
}

fn one_round(round: u64) {
    let (ours, theirs) = Pipe::<Vec<u64>>::duplex().unwrap();
    let queue = Queue::new().unwrap();
    let lock = Lock::new().unwrap();
    let counter = Value::new(0u64).unwrap();
    let child = spawn!(churn, theirs, queue.clone(), lock.clone(), counter.clone()).unwrap();
    let mut want = 0;
    for i in 0..20 {
        let numbers: Vec<u64> = (0..(i * 50 + round % 7)).collect();
        want += numbers.iter().sum::<u64>();
        ours.send(&numbers).unwrap();
        let echoed: String = queue.get_timeout(common::BOUND).unwrap();
        assert_eq!(echoed, want.to_string());
    }
    drop(ours);
    assert_eq!(child.join().unwrap(), want);
    assert_eq!(counter.load(), 20);
}

#[test]
fn churn_leaves_no_descriptors_zombies_or_memory_behind() {
    let secs: u64 = std::env::var("MULTIPROC_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    // A warm-up round first: lazily started threads and caches count as
    // the baseline.
    one_round(0);
    // Under the fork server, the spares this process holds (at most two,
    // forked ahead for the next starts, however many are held when the
    // count is taken) are not leaks: count without them.
    fork_server_drop_spares();
    let (fds, rss) = (open_fds(), rss_bytes());
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut rounds = 1;
    while Instant::now() < deadline {
        one_round(rounds);
        rounds += 1;
    }
    // Reaping after a join is immediate; a dropped handle's is not, but
    // none is dropped unjoined here.
    assert_eq!(zombies(), 0, "zombies after {rounds} rounds");
    fork_server_drop_spares();
    assert_eq!(open_fds(), fds, "descriptors after {rounds} rounds");
    let grown = rss_bytes().saturating_sub(rss);
    assert!(
        grown < 32 << 20,
        "resident memory grew by {grown} bytes over {rounds} rounds"
    );
    println!("soak: {rounds} rounds in {secs} s");
}
