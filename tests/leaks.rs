//! Resource hygiene over many spawns. Its own test binary, so no other test
//! opens descriptors or spawns children while it counts; its tests take
//! [`ALONE`] so that they do not count each other's either.

mod common;

use std::collections::HashSet;
use std::sync::Mutex;

use multiproc::__private::fork_server_drop_spares;
use multiproc::{Connection, Manager, Pipe, Process, entry, process_entry, spawn};

/// Held by each test while it counts.
static ALONE: Mutex<()> = Mutex::new(());

#[process_entry]
fn add(a: i32, b: i32) -> i32 {
    a + b
}

/// Serves a manager on a loopback port, which it sends back first.
#[process_entry]
fn serve_manager(port: Connection<u16>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    port.send(&listener.local_addr().unwrap().port()).unwrap();
    let _ = Manager::serve_on(listener, b"leaks");
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
    common::processes()
        .into_iter()
        .filter(|&(_, state, ppid)| state == b'Z' && ppid == me)
        .map(|(pid, _, _)| pid)
        .collect()
}

/// The descriptors left open by `n` more runs of `use_one`, after one run
/// to warm up lazily made state (registry, reaper pipe, client pools).
/// Under the fork server, the spares this process holds (at most two,
/// forked ahead for the next starts) are not leaks: counted without them.
/// Also checks that no child is left a zombie.
fn fds_leaked_by(n: usize, mut use_one: impl FnMut()) -> Vec<String> {
    use_one();
    fork_server_drop_spares();
    let before = open_fds();
    for _ in 0..n {
        use_one();
    }
    fork_server_drop_spares();
    let after = open_fds();
    assert_eq!(zombies(), Vec::<u32>::new());
    after.difference(&before).cloned().collect()
}

#[test]
fn a_thousand_spawns_leak_no_fds_and_no_zombies() {
    let _alone = ALONE.lock().unwrap_or_else(|p| p.into_inner());
    let mut i = 0;
    let leaked = fds_leaked_by(1000, || {
        assert_eq!(spawn!(add, i, 1).unwrap().join().unwrap(), i + 1);
        i += 1;
    });
    assert!(leaked.is_empty(), "descriptors leaked: {leaked:?}");
}

/// A forgotten permit keeps its manager's connections open until this
/// process ends, so that the server does not give the permit back; once
/// that server is shut down there is nothing to keep, and each manager
/// used so would leave its descriptors open for good.
#[test]
fn managers_shut_down_with_a_forgotten_permit_leak_no_fds() {
    let _alone = ALONE.lock().unwrap_or_else(|p| p.into_inner());
    let use_one = || {
        let manager = Manager::start().unwrap();
        let sem = manager.semaphore(1).unwrap();
        sem.acquire().unwrap().forget();
        drop(sem);
        manager.shutdown().unwrap();
    };
    let leaked = fds_leaked_by(20, use_one);
    assert!(leaked.is_empty(), "descriptors leaked: {leaked:?}");
}

/// The same for managers this process only connected to: it cannot stop
/// them, so a client kept for a forgotten permit is let go once its server
/// has hung up, when the next permit is forgotten.
#[test]
fn remote_managers_gone_with_a_forgotten_permit_leak_no_fds() {
    let _alone = ALONE.lock().unwrap_or_else(|p| p.into_inner());
    let use_one = || {
        let (port_rx, port_tx) = Pipe::<u16>::duplex().unwrap();
        let server = Process::new(entry!(serve_manager), (port_tx,))
            .daemon(true)
            .start()
            .unwrap();
        let port = port_rx.recv().unwrap();
        let manager = Manager::connect(&format!("127.0.0.1:{port}"), b"leaks").unwrap();
        let sem = manager.semaphore(1).unwrap();
        sem.acquire().unwrap().forget();
        drop(sem);
        drop(manager);
        server.kill().unwrap();
        let _ = server.join();
    };
    let leaked = fds_leaked_by(20, use_one);
    // The last client stays kept until a permit is forgotten again.
    assert!(leaked.len() <= 1, "descriptors leaked: {leaked:?}");
}
