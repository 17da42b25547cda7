//! A whole node lost while the pool runs: its link cut, then everything on
//! it killed (`ci/slurm/node.sh lose N`), as a power failure would. Needs
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

/// Item 0 stalls, after writing the name of its node to `marker` (the
/// filesystem is shared); the others answer at once.
#[process_entry]
fn stall_first(arg: (u64, String)) -> (u64, String) {
    let (x, marker) = arg;
    let host = hostname();
    if x == 0 {
        let _ = std::fs::write(&marker, &host);
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
            pool.apply_async(entry!(stall_first), ((x, marker.clone()),))
                .unwrap()
        })
        .collect();
    // Whichever node item 0 went to is the one lost.
    let mut host = String::new();
    eventually("item 0 stalls on a node", || {
        host = std::fs::read_to_string(&marker).unwrap_or_default();
        !host.is_empty()
    });
    let lost: u32 = host
        .strip_prefix('n')
        .and_then(|i| i.parse().ok())
        .unwrap_or_else(|| panic!("a node name, not {host:?}"));
    node("lose", lost);
    let _restore = Restore(lost);
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
        "only the task {host} was running fails: {failed:?}"
    );
    let err = failed.into_iter().next().unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Disconnected, "{err}");
    assert!(err.to_string().contains(&host), "{err}");
    let mut done: Vec<u64> = ok
        .into_iter()
        .map(|r| {
            let (x, on) = r.unwrap();
            assert_ne!(on, host, "nothing completes on the lost node");
            x
        })
        .collect();
    done.sort_unstable();
    assert_eq!(done, (1..40u64).collect::<Vec<_>>());
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
