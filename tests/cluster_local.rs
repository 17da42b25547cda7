//! The cluster launcher without a cluster: `tests/data/fake_srun.sh` stands
//! in for `srun` and starts the tasks on this host, so that the launcher's
//! path (boot marker, connecting back, the handshake, the TCP link, ending
//! the workers) is tested by every `cargo test`. `tests/cluster.rs` runs
//! the same on the emulated Slurm cluster.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::eventually;
use multiproc::cluster::Slurm;
use multiproc::{ErrorKind, Pool, Queue, entry, process_entry};

fn fake_srun() -> Slurm {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/fake_srun.sh");
    Slurm::new()
        .srun(script)
        .start_timeout(Duration::from_secs(60))
}

#[process_entry]
fn square(x: u64) -> u64 {
    x * x
}

#[process_entry]
fn pid_of_worker() -> u32 {
    std::process::id()
}

#[process_entry]
fn abort_on(x: u64) -> u64 {
    if x == 5 {
        std::process::abort();
    }
    x
}

#[process_entry]
fn put_into(q: Queue<u64>, x: u64) {
    let _ = q.put(x);
}

#[process_entry]
fn returns_a_queue() -> Queue<u64> {
    Queue::new().unwrap()
}

#[test]
fn workers_started_by_the_launcher_run_a_map() {
    let pool = Pool::builder()
        .launcher(fake_srun().tasks(3))
        .build()
        .unwrap();
    assert_eq!(pool.processes(), 3);
    let out = pool.map(entry!(square), 0..1000u64).unwrap();
    assert_eq!(out, (0..1000u64).map(|x| x * x).collect::<Vec<_>>());
    let pending = pool.apply_async(entry!(square), (12,)).unwrap();
    assert_eq!(pending.get().unwrap(), 144);
    pool.close();
    pool.join().unwrap();
}

#[test]
fn handles_are_refused_both_ways_with_the_reason() {
    let pool = Pool::builder()
        .launcher(fake_srun().tasks(1))
        .build()
        .unwrap();
    let q = Queue::<u64>::new().unwrap();
    let err = pool.apply(entry!(put_into), (q, 1)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("cannot cross"), "{err}");
    let err = pool.apply(entry!(returns_a_queue), ()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Encode, "{err}");
    assert!(err.to_string().contains("cannot cross"), "{err}");
    assert_eq!(pool.apply(entry!(square), (3,)).unwrap(), 9);
}

#[process_entry]
fn init_with_queue(q: Queue<u64>) {
    let _ = q.put(1);
}

#[test]
fn an_initializer_holding_a_handle_is_refused_before_anything_starts() {
    let q = Queue::<u64>::new().unwrap();
    let err = Pool::builder()
        .launcher(fake_srun().tasks(1))
        .initializer(entry!(init_with_queue), (q,))
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("cannot cross"), "{err}");
}

#[test]
fn a_dead_worker_fails_only_its_task() {
    let pool = Pool::builder()
        .launcher(fake_srun().tasks(2))
        .build()
        .unwrap();
    let results: Vec<_> = pool
        .imap_chunked(entry!(abort_on), 0..20u64, 1)
        .unwrap()
        .collect();
    for (x, r) in results.iter().enumerate() {
        match r {
            Ok(v) => assert_eq!(*v, x as u64),
            Err(e) => {
                assert_eq!(x, 5, "{e}");
                assert_eq!(e.kind(), ErrorKind::Disconnected, "{e}");
            }
        }
    }
    assert!(results[5].is_err());
    // One worker is left, and it serves.
    assert_eq!(pool.map(entry!(square), 0..4u64).unwrap(), [0, 1, 4, 9]);
}

#[test]
fn dropping_the_pool_ends_its_workers() {
    let pool = Pool::builder()
        .launcher(fake_srun().tasks(2))
        .build()
        .unwrap();
    let pids: std::collections::HashSet<u32> = pool
        .starmap_chunked(entry!(pid_of_worker), vec![(); 50], 1)
        .unwrap()
        .into_iter()
        .collect();
    assert!(!pids.is_empty());
    for pid in &pids {
        assert_ne!(*pid, std::process::id());
        assert!(common::state_of(*pid).is_some(), "worker {pid} runs");
    }
    drop(pool);
    for pid in pids {
        eventually("the worker is gone", || {
            common::state_of(pid).is_none_or(|s| s == b'Z')
        });
    }
}

#[test]
fn a_launcher_that_refuses_fails_build_with_its_words() {
    let err = Pool::builder()
        .launcher(fake_srun().partition("refused"))
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Spawn, "{err}");
    assert!(err.to_string().contains("Invalid partition"), "{err}");

    let err = Pool::builder()
        .launcher(Slurm::new().srun("/nonexistent/srun"))
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Spawn, "{err}");
    assert!(err.to_string().contains("could not run"), "{err}");
}

/// One byte more than a message between hosts may hold (1 GiB), as a
/// task's argument or result.
const OVER_TCP_LIMIT: usize = (1 << 30) + 1;

#[process_entry]
fn length_of(s: String) -> u64 {
    s.len() as u64
}

#[process_entry]
fn string_of_len(n: u64) -> String {
    "x".repeat(n as usize)
}

#[test]
fn a_message_over_the_tcp_limit_fails_its_task_and_the_worker_serves_on() {
    // One worker: a lost worker is not replaced, so the last call shows
    // that neither message cost the pool its worker.
    let pool = Pool::builder()
        .launcher(fake_srun().tasks(1))
        .build()
        .unwrap();
    let err = pool
        .apply(entry!(length_of), ("x".repeat(OVER_TCP_LIMIT),))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Encode, "{err}");
    assert!(err.to_string().contains("limit"), "{err}");
    let err = pool
        .apply(entry!(string_of_len), (OVER_TCP_LIMIT as u64,))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Encode, "{err}");
    assert!(err.to_string().contains("limit"), "{err}");
    assert_eq!(pool.apply(entry!(square), (3,)).unwrap(), 9);
}

#[test]
fn chunks_too_large_together_for_one_message_each_go_alone() {
    let pool = Pool::builder()
        .launcher(fake_srun().tasks(1))
        .build()
        .unwrap();
    // Quick chunks, one after another: the worker is then given several
    // chunks in one message.
    let warm = pool.map_chunked(entry!(square), 0..2000u64, 1).unwrap();
    assert_eq!(warm.len(), 2000);
    // Three arguments of 0.4 GiB: any two are over the limit of one
    // message together, and each fits alone.
    let len = 400 << 20;
    let out = pool
        .map_chunked(entry!(length_of), vec!["x".repeat(len); 3], 1)
        .unwrap();
    assert_eq!(out, [len as u64; 3]);
}
