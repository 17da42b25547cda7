//! The pool on a Slurm cluster: workers started by `srun` on the emulated
//! nodes of `ci/slurm/` (4 nodes, each its own network namespace and host
//! name), connecting back over authenticated TCP.
//!
//! Run with a cluster up: `ci/slurm/with-slurm.sh 4 -- cargo test --test
//! cluster -- --test-threads=1`. Without one (no `SLURM_CONF`) each test
//! says it was skipped, unless `MULTIPROC_REQUIRE_SLURM` is set (CI), when
//! that is a failure.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use common::eventually;
use multiproc::cluster::Slurm;
use multiproc::{ErrorKind, Manager, Pool, Queue, entry, process_entry};

/// One pool at a time: each takes every node.
static CLUSTER: Mutex<()> = Mutex::new(());

fn cluster() -> Option<std::sync::MutexGuard<'static, ()>> {
    if std::env::var_os("SLURM_CONF").is_none() {
        assert!(
            std::env::var_os("MULTIPROC_REQUIRE_SLURM").is_none(),
            "MULTIPROC_REQUIRE_SLURM is set but there is no cluster (SLURM_CONF)"
        );
        println!("skipped: no Slurm cluster (run under ci/slurm/with-slurm.sh)");
        return None;
    }
    Some(CLUSTER.lock().unwrap_or_else(|p| p.into_inner()))
}

/// Whether each node has its own host name and address (`SLURM_NETNS=1`).
fn separate_hosts() -> bool {
    std::env::var("SLURM_TEST_BIND").is_ok_and(|b| b != "127.0.0.1")
}

fn four_nodes() -> Slurm {
    Slurm::new()
        .nodes(4)
        .tasks_per_node(1)
        .immediate(Duration::from_secs(10))
        .start_timeout(Duration::from_secs(60))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[process_entry]
fn square_where(x: u64) -> (u64, String) {
    (x * x, hostname())
}

#[process_entry]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[process_entry]
fn panics_on(x: u64) -> u64 {
    assert!(x != 3, "three is not welcome");
    x
}

#[test]
fn map_runs_tasks_on_every_node_and_returns_them_in_order() {
    let Some(_cluster) = cluster() else { return };
    let pool = Pool::builder().launcher(four_nodes()).build().unwrap();
    assert_eq!(pool.processes(), 4);
    let out = pool
        .map_chunked(entry!(square_where), 0..400u64, 1)
        .unwrap();
    let values: Vec<u64> = out.iter().map(|(v, _)| *v).collect();
    assert_eq!(values, (0..400u64).map(|x| x * x).collect::<Vec<_>>());
    let hosts: BTreeSet<&str> = out.iter().map(|(_, h)| h.as_str()).collect();
    if separate_hosts() {
        assert_eq!(hosts, BTreeSet::from(["n1", "n2", "n3", "n4"]));
    } else {
        println!("note: nodes share this host's name (SLURM_NETNS unset): {hosts:?}");
    }
    assert_eq!(
        pool.starmap(entry!(add), vec![(1, 2), (3, 4)]).unwrap(),
        [3, 7]
    );
    let pending = pool.apply_async(entry!(add), (40, 2)).unwrap();
    assert_eq!(pending.get().unwrap(), 42);
    let mut unordered: Vec<u64> = pool
        .imap_unordered(entry!(add_one), 0..50u64)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    unordered.sort_unstable();
    assert_eq!(unordered, (1..=50u64).collect::<Vec<_>>());
    let first: Vec<u64> = pool
        .imap(entry!(panics_on), 0..3u64)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(first, [0, 1, 2]);
    pool.close();
    pool.join().unwrap();
}

#[test]
fn a_panicking_task_fails_alone_with_its_message() {
    let Some(_cluster) = cluster() else { return };
    let pool = Pool::builder().launcher(four_nodes()).build().unwrap();
    let results: Vec<_> = pool
        .imap_chunked(entry!(panics_on), 0..8u64, 1)
        .unwrap()
        .collect();
    for (x, r) in results.iter().enumerate() {
        if x == 3 {
            let err = r.as_ref().unwrap_err();
            assert!(err.is_panicked(), "{err}");
            assert!(err.to_string().contains("three is not welcome"), "{err}");
        } else {
            assert_eq!(*r.as_ref().unwrap(), x as u64);
        }
    }
    // The worker that ran it is still serving.
    assert_eq!(pool.map(entry!(panics_on), 4..8u64).unwrap(), [4, 5, 6, 7]);
}

#[process_entry]
fn put_into(q: Queue<u64>, x: u64) {
    let _ = q.put(x);
}

#[test]
fn a_shared_memory_handle_is_refused_with_the_reason() {
    let Some(_cluster) = cluster() else { return };
    let pool = Pool::builder().launcher(four_nodes()).build().unwrap();
    let q = Queue::<u64>::new().unwrap();
    let err = pool.apply(entry!(put_into), (q, 1)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("cannot cross"), "{err}");
    // Nothing was lost: the pool still serves.
    assert_eq!(pool.apply(entry!(add), (1, 1)).unwrap(), 2);
}

#[process_entry]
fn record_host(hosts: multiproc::ListProxy<String>, x: u64) -> u64 {
    hosts.push(hostname()).unwrap();
    x
}

#[process_entry]
fn serve_manager(listener: multiproc::Fd) -> String {
    let listener = std::net::TcpListener::from(listener.into_owned_fd());
    match Manager::serve_on(listener, b"cluster test key") {
        Ok(()) => "returned".into(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_tcp_manager_proxy_works_from_every_node() {
    let Some(_cluster) = cluster() else { return };
    let bind = std::env::var("SLURM_TEST_BIND").unwrap_or_else(|_| "127.0.0.1".into());
    let listener = std::net::TcpListener::bind((bind.as_str(), 0)).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = multiproc::spawn!(
        serve_manager,
        multiproc::Fd::from(std::os::fd::OwnedFd::from(listener))
    )
    .unwrap();
    let manager = Manager::connect(&addr, b"cluster test key").unwrap();
    let hosts = manager.list::<String>(vec![]).unwrap();
    let pool = Pool::builder().launcher(four_nodes()).build().unwrap();
    let items: Vec<_> = (0..200u64).map(|x| (hosts.clone(), x)).collect();
    let out = pool.starmap_chunked(entry!(record_host), items, 1).unwrap();
    assert_eq!(out, (0..200u64).collect::<Vec<_>>());
    let seen = hosts.snapshot().unwrap();
    assert_eq!(seen.len(), 200);
    if separate_hosts() {
        let distinct: BTreeSet<&str> = seen.iter().map(String::as_str).collect();
        assert_eq!(distinct, BTreeSet::from(["n1", "n2", "n3", "n4"]));
    }
    drop(pool);
    server.kill().unwrap();
    let _ = server.join();
}

#[process_entry]
fn host_pid() -> (String, u32) {
    (hostname(), std::process::id())
}

#[process_entry]
fn abort_on(x: u64) -> u64 {
    if x == 5 {
        std::process::abort();
    }
    x
}

#[test]
fn a_killed_worker_fails_only_its_task_and_the_rest_completes() {
    let Some(_cluster) = cluster() else { return };
    let pool = Pool::builder().launcher(four_nodes()).build().unwrap();
    let results: Vec<_> = pool
        .imap_chunked(entry!(abort_on), 0..40u64, 1)
        .unwrap()
        .collect();
    for (x, r) in results.iter().enumerate() {
        if x == 5 {
            let err = r.as_ref().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Disconnected, "{err}");
            assert!(err.to_string().contains("item 5"), "{err}");
        } else {
            assert_eq!(*r.as_ref().unwrap(), x as u64, "item {x}");
        }
    }
    // Three workers are left, and they serve.
    assert_eq!(
        pool.map(entry!(abort_on), 10..20u64).unwrap(),
        (10..20).collect::<Vec<_>>()
    );
}

/// The pids of this test program's copies that run as tasks of a Slurm
/// step (their parent is a `slurmstepd`): the workers, on whatever node.
fn worker_pids() -> HashSet<u32> {
    let me = std::env::current_exe().unwrap();
    common::processes()
        .into_iter()
        .filter(|&(pid, _, ppid)| {
            std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == me)
                && std::fs::read_to_string(format!("/proc/{ppid}/comm"))
                    .is_ok_and(|comm| comm.trim() == "slurmstepd")
        })
        .map(|(pid, _, _)| pid)
        .collect()
}

#[test]
fn dropping_the_pool_leaves_no_worker_on_any_node() {
    let Some(_cluster) = cluster() else { return };
    let pool = Pool::builder().launcher(four_nodes()).build().unwrap();
    let seen: HashSet<(String, u32)> = pool
        .starmap_chunked(entry!(host_pid), vec![(); 100], 1)
        .unwrap()
        .into_iter()
        .collect();
    let pids = worker_pids();
    assert_eq!(pids.len(), 4, "the four workers, seen from here: {pids:?}");
    for (_, pid) in &seen {
        assert!(pids.contains(pid), "task pid {pid} is one of {pids:?}");
    }
    drop(pool);
    // The drop waited for srun, which waits for every task: nothing is left.
    let left = worker_pids();
    assert!(left.is_empty(), "workers left after drop: {left:?}");
}

#[test]
fn terminate_ends_a_task_that_never_returns() {
    let Some(_cluster) = cluster() else { return };
    let marker = format!("/tmp/multiproc-never-returns-{}", std::process::id());
    let _ = std::fs::remove_file(&marker);
    let pool = Pool::builder().launcher(four_nodes()).build().unwrap();
    let stuck = pool
        .apply_async(entry!(never_returns), (marker.clone(),))
        .unwrap();
    let mut pid = String::new();
    eventually("the stuck task runs", || {
        pid = std::fs::read_to_string(&marker).unwrap_or_default();
        !pid.is_empty()
    });
    let _ = std::fs::remove_file(&marker);
    let pid: u32 = pid.parse().unwrap();
    assert!(worker_pids().contains(&pid));
    pool.terminate();
    let err = stuck.get().unwrap_err();
    assert!(err.is_disconnected(), "{err}");
    // Its worker ends by itself, in the middle of the task, once its
    // connection is shut: before the pool is dropped (whose drop would
    // signal the job step).
    eventually("the stuck worker exits", || !worker_pids().contains(&pid));
    drop(pool);
    assert!(worker_pids().is_empty());
}

/// Writes its worker's pid to `marker` (the filesystem is shared), then
/// never returns.
#[process_entry]
fn never_returns(marker: String) {
    let _ = std::fs::write(&marker, std::process::id().to_string());
    loop {
        std::thread::park();
    }
}

#[test]
fn a_request_the_cluster_cannot_meet_fails_at_build() {
    let Some(_cluster) = cluster() else { return };
    let err = Pool::builder()
        .launcher(Slurm::new().nodes(1).partition("no-such-partition"))
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Spawn, "{err}");
    assert!(err.to_string().contains("partition"), "{err}");

    let err = Pool::builder()
        .launcher(Slurm::new().nodes(40).immediate(Duration::from_secs(2)))
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Spawn, "{err}");
    assert!(err.to_string().contains("srun"), "{err}");
}

#[test]
fn workers_that_cannot_reach_the_pool_fail_build_in_bounded_time() {
    let Some(_cluster) = cluster() else { return };
    // A port nobody listens on: the workers' dial fails and they exit.
    let err = Pool::builder()
        .launcher(
            four_nodes()
                .connect_back("192.0.2.1") // TEST-NET-1: never routed
                .start_timeout(Duration::from_secs(5)),
        )
        .build()
        .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Timeout | ErrorKind::Spawn),
        "{err}"
    );
    eventually("the workers are gone", || worker_pids().is_empty());
}

#[test]
fn pool_settings_a_cluster_decides_are_refused() {
    let err = Pool::builder()
        .launcher(Slurm::new())
        .processes(3)
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    let err = Pool::builder()
        .launcher(Slurm::new().nodes(0))
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
}

#[process_entry]
fn exe_path() -> String {
    std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

#[test]
fn broadcast_runs_a_copy_of_the_binary_on_the_nodes() {
    let Some(_cluster) = cluster() else { return };
    let dest = format!("/tmp/multiproc-bcast-{}", std::process::id());
    let pool = Pool::builder()
        .launcher(four_nodes().broadcast(&dest))
        .build()
        .unwrap();
    let paths: BTreeSet<String> = pool
        .starmap_chunked(entry!(exe_path), vec![(); 40], 1)
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(paths, BTreeSet::from([dest.clone()]));
    assert_eq!(pool.map(entry!(add_one), 0..4u64).unwrap(), [1, 2, 3, 4]);
    drop(pool);
    let _ = std::fs::remove_file(&dest);
}

#[process_entry]
fn add_one(x: u64) -> u64 {
    x + 1
}

/// Item 7 stalls after writing its worker's pid to `marker` (the
/// filesystem is shared); the others answer at once.
#[process_entry]
fn stall_on_seven(arg: (u64, String)) -> u64 {
    let (x, marker) = arg;
    if x == 7 {
        let _ = std::fs::write(&marker, std::process::id().to_string());
        loop {
            std::thread::park();
        }
    }
    x
}

#[test]
fn a_worker_killed_from_outside_fails_only_the_task_it_held() {
    let Some(_cluster) = cluster() else { return };
    let marker = format!("/tmp/multiproc-killed-worker-{}", std::process::id());
    let _ = std::fs::remove_file(&marker);
    let pool = Pool::builder().launcher(four_nodes()).build().unwrap();
    let pending: Vec<_> = (0..20u64)
        .map(|x| {
            pool.apply_async(entry!(stall_on_seven), ((x, marker.clone()),))
                .unwrap()
        })
        .collect();
    let mut pid = String::new();
    eventually("item 7 stalls on a worker", || {
        pid = std::fs::read_to_string(&marker).unwrap_or_default();
        !pid.is_empty()
    });
    let _ = std::fs::remove_file(&marker);
    let pid: u32 = pid.parse().unwrap();
    assert!(worker_pids().contains(&pid), "{pid} is a worker on a node");
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    for (x, p) in pending.into_iter().enumerate() {
        match p.get() {
            Ok(v) => assert_eq!(v, x as u64),
            Err(e) => {
                assert_eq!(x, 7, "only item 7 fails: {e}");
                assert_eq!(e.kind(), ErrorKind::Disconnected, "{e}");
            }
        }
    }
    // Three workers are left, and they serve.
    assert_eq!(
        pool.map(entry!(add_one), 0..6u64).unwrap(),
        [1, 2, 3, 4, 5, 6]
    );
}

const IN_ALLOCATION: &str = "MULTIPROC_TEST_IN_ALLOCATION";

/// Run by the test below inside `salloc -N2`: the pool's step uses that
/// allocation (its job id, its two nodes).
#[test]
#[ignore = "run by inside_an_allocation_the_pool_runs_as_a_step_of_it"]
fn inner_pool_in_allocation() {
    if !common::run_by_outer_test(
        IN_ALLOCATION,
        "inside_an_allocation_the_pool_runs_as_a_step_of_it",
    ) {
        return;
    }
    let job = std::env::var("SLURM_JOB_ID").expect("run inside an allocation");
    let pool = Pool::builder()
        .launcher(
            Slurm::new()
                .tasks_per_node(1)
                .start_timeout(Duration::from_secs(60)),
        )
        .build()
        .unwrap();
    assert_eq!(pool.processes(), 2);
    let seen: BTreeSet<(String, String)> = pool
        .starmap_chunked(entry!(host_and_job), vec![(); 40], 1)
        .unwrap()
        .into_iter()
        .collect();
    let jobs: BTreeSet<&str> = seen.iter().map(|(_, j)| j.as_str()).collect();
    assert_eq!(jobs, BTreeSet::from([job.as_str()]));
    if separate_hosts() {
        assert_eq!(seen.len(), 2, "{seen:?}");
    }
    println!("inner pool ran in job {job} on {seen:?}");
}

#[process_entry]
fn host_and_job() -> (String, String) {
    (
        hostname(),
        std::env::var("SLURM_JOB_ID").unwrap_or_default(),
    )
}

#[test]
fn inside_an_allocation_the_pool_runs_as_a_step_of_it() {
    let Some(_cluster) = cluster() else { return };
    let out = std::process::Command::new("salloc")
        .args(["-N2", "--immediate=10", "--quiet"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "inner_pool_in_allocation",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(IN_ALLOCATION, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("inner pool ran in job"), "{stdout}");
}
