//! Who outlives whom: daemons, unjoined children, dropped handles. Checked in /proc.

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};

use std::time::{Duration, Instant};

use multiproc::{Fd, Process, entry, process_entry};

fn pipe() -> (OwnedFd, OwnedFd) {
    let (r, w) = std::io::pipe().expect("pipe");
    (r.into(), w.into())
}

fn read_u32(fd: OwnedFd) -> u32 {
    let mut bytes = [0u8; 4];
    std::fs::File::from(fd)
        .read_exact(&mut bytes)
        .expect("read pid");
    u32::from_le_bytes(bytes)
}

fn block_on(gate: Fd) {
    let mut byte = [0u8; 1];
    let _ = std::fs::File::from(gate.into_owned_fd()).read(&mut byte);
}

/// `Some(state)` from /proc/<pid>/stat, `None` once the pid is gone.
fn proc_state(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().next().map(str::to_string)
}

#[process_entry]
fn blocker(gate: Fd) {
    block_on(gate)
}

/// Starts a daemon grandchild that blocks on `gate`, reports its pid, then blocks too.
#[process_entry]
fn middle_with_daemon(gate: Fd, report: Fd) {
    let daemon = Process::new(entry!(blocker), (gate.try_clone().unwrap(),))
        .daemon(true)
        .start()
        .unwrap();
    let mut report = std::fs::File::from(report.into_owned_fd());
    report.write_all(&daemon.pid().to_le_bytes()).unwrap();
    drop(report);
    block_on(gate);
}

#[test]
fn daemon_dies_when_its_parent_is_sigkilled() {
    // The gate's write end stays here, so nothing but the parent-death
    // signal can end the daemon.
    let (gate_r, _gate_w) = pipe();
    let (report_r, report_w) = pipe();
    let middle = Process::new(
        entry!(middle_with_daemon),
        (Fd::from(gate_r), Fd::from(report_w)),
    )
    .start()
    .unwrap();
    let daemon_pid = read_u32(report_r);
    assert!(proc_state(daemon_pid).is_some(), "daemon should be running");
    middle.kill().unwrap();
    let err = middle.join().unwrap_err();
    assert_eq!(err.exitcode(), Some(-9));
    assert!(
        common::exits_within(daemon_pid, Duration::from_secs(10)),
        "daemon {daemon_pid} outlived its SIGKILLed parent"
    );
}

/// Starts a daemon (forked by the fork server if `forked`) that blocks on
/// `gate`, reports its pid, and returns without joining it.
#[process_entry]
fn return_leaving_a_daemon(forked: bool, gate: Fd, report: Fd) {
    let method = if forked {
        multiproc::StartMethod::ForkServer
    } else {
        multiproc::StartMethod::Spawn
    };
    let daemon = Process::new(entry!(blocker), (gate,))
        .daemon(true)
        .start_method(method)
        .start()
        .unwrap();
    let mut report = std::fs::File::from(report.into_owned_fd());
    report.write_all(&daemon.pid().to_le_bytes()).unwrap();
}

#[test]
fn a_daemon_is_killed_not_waited_for_when_its_parent_returns() {
    for method in common::start_methods() {
        // The gate's write end stays here: only its parent's exit can end
        // the daemon.
        let (gate_r, _gate_w) = pipe();
        let (report_r, report_w) = pipe();
        let mut middle = Process::new(
            entry!(return_leaving_a_daemon),
            (
                method == multiproc::StartMethod::ForkServer,
                Fd::from(gate_r),
                Fd::from(report_w),
            ),
        )
        .start()
        .unwrap();
        let daemon_pid = read_u32(report_r);
        // The middle exits although its daemon still runs.
        assert_eq!(
            middle.join_timeout(common::BOUND).unwrap(),
            Some(()),
            "{method:?}: the parent waited for its daemon"
        );
        assert!(
            common::exits_within(daemon_pid, common::BOUND),
            "{method:?}: daemon {daemon_pid} outlived its parent's exit"
        );
    }
}

/// Starts a child that blocks on `gate`, reports its pid, and returns
/// without joining it (dropping its handle).
#[process_entry]
fn return_leaving_a_child(gate: Fd, report: Fd) {
    let child = Process::new(entry!(blocker), (gate,)).start().unwrap();
    let mut report = std::fs::File::from(report.into_owned_fd());
    report.write_all(&child.pid().to_le_bytes()).unwrap();
}

#[test]
fn a_child_waits_for_its_unjoined_children_before_it_exits() {
    let (gate_r, gate_w) = pipe();
    let (report_r, report_w) = pipe();
    let mut middle = Process::new(
        entry!(return_leaving_a_child),
        (Fd::from(gate_r), Fd::from(report_w)),
    )
    .start()
    .unwrap();
    let grandchild = read_u32(report_r);
    // Its entry has returned, yet it must not exit while its child runs.
    assert_eq!(
        middle.join_timeout(Duration::from_millis(500)).unwrap(),
        None
    );
    assert!(middle.is_alive());
    drop(gate_w);
    assert_eq!(middle.join_timeout(common::BOUND).unwrap(), Some(()));
    assert!(common::exits_within(grandchild, common::BOUND));
}

#[process_entry]
fn echo_byte(input: Fd, output: Fd) -> u8 {
    let mut byte = [0u8; 1];
    std::fs::File::from(input.into_owned_fd())
        .read_exact(&mut byte)
        .unwrap();
    std::fs::File::from(output.into_owned_fd())
        .write_all(&byte)
        .unwrap();
    byte[0]
}

#[test]
fn daemon_survives_the_thread_that_spawned_it() {
    let (in_r, in_w) = pipe();
    let (out_r, out_w) = pipe();
    let mut daemon = std::thread::spawn(move || {
        Process::new(entry!(echo_byte), (Fd::from(in_r), Fd::from(out_w)))
            .daemon(true)
            .start()
            .unwrap()
    })
    .join()
    .unwrap();
    // The spawning thread is gone; a round trip proves the daemon is not.
    std::fs::File::from(in_w).write_all(&[42]).unwrap();
    let mut byte = [0u8; 1];
    std::fs::File::from(out_r).read_exact(&mut byte).unwrap();
    assert_eq!(byte[0], 42);
    assert_eq!(
        daemon.join_timeout(Duration::from_secs(30)).unwrap(),
        Some(42)
    );
}

#[test]
fn dropped_handle_of_a_running_child_leaves_no_zombie() {
    let (gate_r, gate_w) = pipe();
    let child = Process::new(entry!(blocker), (Fd::from(gate_r),))
        .start()
        .unwrap();
    let pid = child.pid();
    drop(child);
    assert!(proc_state(pid).is_some());
    drop(gate_w);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match proc_state(pid) {
            None => break,
            Some(state) => assert!(
                Instant::now() < deadline,
                "child {pid} still in state {state}"
            ),
        }
        std::thread::yield_now();
    }
}

#[test]
fn dropped_handle_of_a_finished_child_leaves_no_zombie() {
    let (gate_r, gate_w) = pipe();
    let mut child = Process::new(entry!(blocker), (Fd::from(gate_r),))
        .start()
        .unwrap();
    let pid = child.pid();
    drop(gate_w);
    assert_eq!(
        child.join_timeout(Duration::from_secs(30)).unwrap(),
        Some(())
    );
    drop(child);
    assert_eq!(proc_state(pid), None);
}

#[process_entry]
fn print_after_gate(gate: Fd) {
    block_on(gate);
    println!("child done");
}

const INNER: &str = "MULTIPROC_LIFETIME_INNER";

/// Run by `exit_waits_for_unjoined_children` in a fresh copy of this test
/// binary: leaves a child running and returns.
#[test]
#[ignore = "run by exit_waits_for_unjoined_children"]
fn inner_main_returns_with_child_running() {
    if !common::run_by_outer_test(INNER, "exit_waits_for_unjoined_children") {
        return;
    }
    let stdin = rustix::io::fcntl_dupfd_cloexec(std::io::stdin().as_fd(), 3).unwrap();
    let child = Process::new(entry!(print_after_gate), (Fd::from(stdin),))
        .start()
        .unwrap();
    std::mem::forget(child);
    println!("main returning");
}

#[test]
fn exit_waits_for_unjoined_children() {
    common::exit_waits_for_the_gated_child(
        "inner_main_returns_with_child_running",
        INNER,
        &[],
        Duration::from_millis(500),
    );
}

#[process_entry]
fn try_to_have_a_child() -> Result<u32, String> {
    assert!(multiproc::current_process().is_daemon());
    match Process::new(entry!(blocker_free), ()).start() {
        Ok(child) => Ok(child.pid()),
        Err(e) => Err(format!("{:?}: {e}", e.kind())),
    }
}

#[process_entry]
fn blocker_free() {}

#[test]
fn a_daemon_may_not_start_children() {
    // Its children would be left running when the daemon is killed with
    // its parent, outliving the program (Python refuses them too).
    let daemon = Process::new(entry!(try_to_have_a_child), ())
        .daemon(true)
        .start()
        .unwrap();
    let err = daemon.join().unwrap().unwrap_err();
    assert!(err.starts_with("Spawn: "), "{err}");
    assert!(
        err.contains("daemonic processes are not allowed to have children"),
        "{err}"
    );
    assert!(!multiproc::current_process().is_daemon());
}

#[process_entry]
fn plus_one(x: u32) -> u32 {
    x + 1
}

#[process_entry]
fn exits_with(code: i32) {
    std::process::exit(code)
}

/// Whether this process ignores `SIGCHLD`, from /proc.
#[process_entry]
fn ignores_sigchld() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let ignored = status
        .lines()
        .find_map(|line| line.strip_prefix("SigIgn:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .unwrap();
    ignored & (1 << (libc::SIGCHLD - 1)) != 0
}

const INNER_SIGCHLD: &str = "MULTIPROC_LIFETIME_SIGCHLD_INNER";

/// Run by `a_process_that_ignores_sigchld_still_joins_its_children` in a
/// fresh copy of this test binary, started with `SIGCHLD` ignored.
#[test]
#[ignore = "run by a_process_that_ignores_sigchld_still_joins_its_children"]
fn inner_sigchld_ignored() {
    if !common::run_by_outer_test(
        INNER_SIGCHLD,
        "a_process_that_ignores_sigchld_still_joins_its_children",
    ) {
        return;
    }
    // Inherited ignored through `exec`, as from `env --ignore-signal=CHLD`.
    assert!(
        ignores_sigchld(),
        "the outer test starts this with SIGCHLD ignored"
    );
    for method in common::start_methods() {
        // The kernel reaps each child itself: its result is not lost.
        let child = Process::new(entry!(plus_one), (41,))
            .start_method(method)
            .start()
            .unwrap();
        assert_eq!(child.join().unwrap(), 42, "{method:?}");
        let mut child = Process::new(entry!(plus_one), (1,))
            .start_method(method)
            .start()
            .unwrap();
        let joined = child.join_timeout(Duration::from_secs(60)).unwrap();
        assert_eq!(joined, Some(2), "{method:?}");
        assert!(!child.is_alive(), "{method:?}");
        // One that owes a result and ends without it: an error, not a hang.
        let err = Process::new(entry!(exits_with), (3,))
            .start_method(method)
            .start()
            .unwrap()
            .join()
            .unwrap_err();
        assert!(err.is_exited(), "{method:?}: {err}");
        // The fork server reaps its children itself, whatever its parent
        // ignores, so it still says how they ended; and they inherit the
        // parent's dispositions all the same. Under `Spawn`, the kernel
        // reaps them, and since Linux 6.15 keeps how they ended for their
        // pidfds (where pidfds are used); before, that is lost.
        let pidfds = std::env::var_os("MULTIPROC_NO_PIDFD").is_none();
        let known = method == multiproc::StartMethod::ForkServer
            || (pidfds && common::kernel_keeps_exits());
        assert_eq!(
            err.exitcode(),
            known.then_some(3),
            "{method:?}: {err} (kernel {:?})",
            rustix::system::uname().release()
        );
        if !known {
            println!("skipped: the exit status under Spawn (no pidfds, or a kernel before 6.15)");
        }
        let child = Process::new(entry!(ignores_sigchld), ())
            .start_method(method)
            .start()
            .unwrap();
        assert!(child.join().unwrap(), "{method:?}");
        assert!(multiproc::active_children().is_empty(), "{method:?}");
    }
    println!("sigchld ignored: all joined");
}

#[test]
fn a_process_that_ignores_sigchld_still_joins_its_children() {
    // coreutils' `env` sets SIGCHLD ignored and execs the test binary,
    // which keeps that disposition (no `unsafe` signal call in this test).
    run_inner_under_env(
        "--ignore-signal=CHLD",
        "inner_sigchld_ignored",
        INNER_SIGCHLD,
        "sigchld ignored: all joined",
    );
}

/// Runs the ignored test `inner` in a fresh copy of this test binary,
/// started by coreutils' `env` with `env_flag` (a signal disposition or
/// mask, inherited through `exec`) and `var` set, and checks that it
/// passed and printed `done`.
fn run_inner_under_env(env_flag: &str, inner: &str, var: &str, done: &str) {
    let out = std::process::Command::new("env")
        .arg(env_flag)
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", inner, "--ignored", "--nocapture"])
        .env(var, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains(done), "{stdout}\n{stderr}");
}

/// The signals this process blocks, from /proc (`SigBlk`).
#[process_entry]
fn blocked_signals() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("SigBlk:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .unwrap()
}

const INNER_SIGMASK: &str = "MULTIPROC_LIFETIME_SIGMASK_INNER";

/// Run by `a_child_inherits_the_signals_its_parent_blocks` in a fresh copy
/// of this test binary, started with `SIGHUP` blocked.
#[test]
#[ignore = "run by a_child_inherits_the_signals_its_parent_blocks"]
fn inner_sighup_blocked() {
    if !common::run_by_outer_test(
        INNER_SIGMASK,
        "a_child_inherits_the_signals_its_parent_blocks",
    ) {
        return;
    }
    let hup = 1u64 << (libc::SIGHUP - 1);
    assert_ne!(
        blocked_signals() & hup,
        0,
        "the outer test starts this with SIGHUP blocked"
    );
    for method in common::start_methods() {
        for daemon in [false, true] {
            let child = Process::new(entry!(blocked_signals), ())
                .start_method(method)
                .daemon(daemon)
                .start()
                .unwrap();
            let mask = child.join().unwrap();
            assert_ne!(
                mask & hup,
                0,
                "{method:?}, daemon {daemon}: the child unblocked SIGHUP (mask {mask:#x})"
            );
        }
    }
    println!("sighup blocked: inherited");
}

#[test]
fn a_child_inherits_the_signals_its_parent_blocks() {
    // As under `nohup`-like tools, and as std's `Command` (since Rust 1.66)
    // and Python's spawn start a child: with the parent's signal mask.
    run_inner_under_env(
        "--block-signal=HUP",
        "inner_sighup_blocked",
        INNER_SIGMASK,
        "sighup blocked: inherited",
    );
}
