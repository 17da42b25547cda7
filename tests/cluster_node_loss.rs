//! A whole node lost while the pool runs: its link cut, then everything on
//! it killed (`ci/slurm/node.sh lose 3`), as a power failure would. Needs
//! the emulated cluster with a network namespace per node
//! (`SLURM_NETNS=1 ci/slurm/with-slurm.sh 4 -- cargo test --test
//! cluster_node_loss`); skipped without one unless `MULTIPROC_REQUIRE_SLURM`
//! is set. Its own test binary: it disturbs the cluster for other tests.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::eventually;
use multiproc::cluster::Slurm;
use multiproc::{ErrorKind, Pool, entry, process_entry};

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn marker() -> String {
    // The test's pid: the worker is another process, so it is passed in.
    format!("/tmp/multiproc-node-loss-{}", std::process::id())
}

/// Stalls on node n3 (after saying so with a file: the filesystem is
/// shared), answers at once elsewhere.
#[process_entry]
fn stall_on_n3(arg: (u64, String)) -> (u64, String) {
    let (x, marker) = arg;
    let host = hostname();
    if host == "n3" {
        let _ = std::fs::write(&marker, b"stalled");
        loop {
            std::thread::park();
        }
    }
    (x, host)
}

#[process_entry]
fn add_one(x: u64) -> u64 {
    x + 1
}

fn node(action: &str, i: u32) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("ci/slurm/node.sh");
    let status = Command::new("bash")
        .arg(script)
        .arg(action)
        .arg(i.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "node.sh {action} {i}: {status}");
}

#[test]
fn a_lost_node_fails_only_the_task_it_held_and_the_map_completes() {
    let netns = std::env::var("SLURM_TEST_BIND").is_ok_and(|b| b != "127.0.0.1");
    if std::env::var_os("SLURM_CONF").is_none() || !netns {
        assert!(
            std::env::var_os("MULTIPROC_REQUIRE_SLURM").is_none(),
            "MULTIPROC_REQUIRE_SLURM is set but there is no cluster with a namespace per node"
        );
        println!("skipped: needs the emulated cluster with SLURM_NETNS=1");
        return;
    }
    let marker = marker();
    let _ = std::fs::remove_file(&marker);
    let pool = Pool::builder()
        .launcher(
            Slurm::new()
                .nodes(4)
                .tasks_per_node(1)
                .immediate(Duration::from_secs(10))
                .start_timeout(Duration::from_secs(60))
                .node_timeout(Duration::from_secs(3)),
        )
        .build()
        .unwrap();
    let pending: Vec<_> = (0..40u64)
        .map(|x| {
            pool.apply_async(entry!(stall_on_n3), ((x, marker.clone()),))
                .unwrap()
        })
        .collect();
    eventually("a task stalls on n3", || Path::new(&marker).exists());
    node("lose", 3);
    let _restore = Restore(3);
    // A bound, not a wait: the node is declared lost after `node_timeout`.
    let results: Vec<_> = pending
        .into_iter()
        .map(|p| p.get_timeout(Duration::from_secs(60)))
        .collect();
    let _ = std::fs::remove_file(&marker);
    let (ok, failed): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
    assert_eq!(
        failed.len(),
        1,
        "only the task n3 was running fails: {failed:?}"
    );
    let err = failed.into_iter().next().unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Disconnected, "{err}");
    assert!(err.to_string().contains("n3"), "{err}");
    let mut done: Vec<u64> = ok
        .into_iter()
        .map(|r| {
            let (x, host) = r.unwrap();
            assert_ne!(host, "n3");
            x
        })
        .collect();
    done.sort_unstable();
    assert_eq!(done.len(), 39);
    // The three nodes left go on serving.
    assert_eq!(
        pool.map(entry!(add_one), 0..8u64).unwrap(),
        (1..=8).collect::<Vec<_>>()
    );
    drop(pool);
}

/// Brings the node back at the end, passed or failed.
struct Restore(u32);

impl Drop for Restore {
    fn drop(&mut self) {
        // No assertion here: this may run while the test is failing.
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("ci/slurm/node.sh");
        let _ = Command::new("bash")
            .arg(script)
            .args(["restore", &self.0.to_string()])
            .status();
    }
}
