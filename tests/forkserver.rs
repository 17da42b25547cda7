//! The fork server start method: the same `JoinHandle` semantics as a
//! re-exec, each checked under both methods, and what is the fork server's
//! own (its death, its children's parent, the descriptors they hold).

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

use multiproc::{ErrorKind, Fd, Process, StartMethod, entry, process_entry};
use rustix::process::{Pid, Signal};

const BOTH: [StartMethod; 2] = [StartMethod::Spawn, StartMethod::ForkServer];

fn pipe() -> (OwnedFd, OwnedFd) {
    let (r, w) = std::io::pipe().expect("pipe");
    (r.into(), w.into())
}

fn block_on(gate: Fd) {
    let mut byte = [0u8; 1];
    let _ = std::fs::File::from(gate.into_owned_fd()).read(&mut byte);
}

fn kill(pid: u32, sig: Signal) {
    let _ = rustix::process::kill_process(Pid::from_raw(pid as i32).expect("pid"), sig);
}

/// (its pid, its kernel parent, `parent_pid()`)
#[process_entry]
fn whoami() -> (u32, u32, u32) {
    (
        std::process::id(),
        std::os::unix::process::parent_id(),
        multiproc::parent_pid(),
    )
}

#[process_entry]
fn add(a: i32, b: i32) -> i32 {
    a + b
}

#[process_entry]
fn panics(message: String) -> u32 {
    panic!("{message}")
}

#[process_entry]
fn exits_with(code: i32) {
    std::process::exit(code)
}

#[process_entry]
fn blocker(gate: Fd) -> u32 {
    block_on(gate);
    7
}

/// The child's descriptors: (number, what it points to), without the one
/// that reads the directory.
#[process_entry]
fn list_fds() -> Vec<(u32, String)> {
    let mut fds = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap() {
        let entry = entry.unwrap();
        let fd: u32 = entry.file_name().to_str().unwrap().parse().unwrap();
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue; // the directory's own descriptor, closed by now
        };
        let target = target.to_string_lossy().into_owned();
        if !target.starts_with("/proc/") {
            fds.push((fd, target));
        }
    }
    fds.sort();
    fds
}

#[test]
fn a_forked_child_has_the_server_as_kernel_parent_and_us_as_parent_pid() {
    let me = std::process::id();
    for method in common::start_methods() {
        let child = Process::new(entry!(whoami), ())
            .start_method(method)
            .start()
            .unwrap();
        let pid = child.pid();
        let (child_pid, kernel_parent, parent_pid) = child.join().unwrap();
        assert_eq!(child_pid, pid, "{method:?}: the handle has the real pid");
        assert_eq!(parent_pid, me, "{method:?}");
        match method {
            StartMethod::Spawn => assert_eq!(kernel_parent, me),
            StartMethod::ForkServer => {
                assert_ne!(kernel_parent, me, "not forked by a server");
                let exe = std::fs::read_link(format!("/proc/{kernel_parent}/exe")).unwrap();
                assert_eq!(
                    exe,
                    std::env::current_exe().unwrap(),
                    "server is this binary"
                );
            }
        }
        // Joined means reaped: by us, or by the server before it reported.
        assert_eq!(common::state_of(pid), None, "{method:?}: {pid} left behind");
    }
}

/// This process's descriptors above 2 that a child inherits (those without
/// `O_CLOEXEC`, such as a jobserver pipe from cargo), from /proc/self/fdinfo.
fn inheritable_fds() -> Vec<u32> {
    let mut fds = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fdinfo").unwrap() {
        let entry = entry.unwrap();
        let fd: u32 = entry.file_name().to_str().unwrap().parse().unwrap();
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
            .unwrap();
        if fd > 2 && flags & libc::O_CLOEXEC as u32 == 0 {
            fds.push(fd);
        }
    }
    fds
}

#[test]
fn a_child_holds_only_its_stdio_and_control_socket() {
    children_hold_only_their_stdio_and_control_socket();
}

#[test]
fn without_closefrom_in_posix_spawn_a_child_still_holds_only_its_own() {
    // With a C library older than glibc 2.34, children are started by
    // std's fork path instead: same arguments, environment, descriptors.
    run_inner(
        "inner_fds_by_fork_path",
        &[("MULTIPROC_TEST_NO_CLOSEFROM", "1")],
    );
}

#[test]
#[ignore = "run by without_closefrom_in_posix_spawn_a_child_still_holds_only_its_own"]
fn inner_fds_by_fork_path() {
    if !common::run_by_outer_test(
        INNER,
        "without_closefrom_in_posix_spawn_a_child_still_holds_only_its_own",
    ) {
        return;
    }
    children_hold_only_their_stdio_and_control_socket();
    // Arguments and environment, as `posix_spawn` would give them.
    let (var, _) = Process::new(
        entry!(env_and_fds),
        ("MULTIPROC_FALLBACK_TEST".to_string(),),
    )
    .env("MULTIPROC_FALLBACK_TEST", "set")
    .start_method(StartMethod::Spawn)
    .start()
    .unwrap()
    .join()
    .unwrap();
    assert_eq!(var.as_deref(), Some("set"));
}

fn children_hold_only_their_stdio_and_control_socket() {
    // A pipe without close-on-exec, as a C library might leave open, or a
    // shell or make might pass down: a child must not get it, under either
    // method (Python's spawn closes it too).
    let (stray_r, stray_w) = rustix::pipe::pipe().expect("pipe");
    assert!(inheritable_fds().contains(&(stray_r.as_raw_fd() as u32)));
    for method in common::start_methods() {
        // Another child running meanwhile: the server then holds its
        // status pipe and pidfd too, which a forked child must not keep.
        let (gate_r, gate_w) = pipe();
        let other = Process::new(entry!(blocker), (Fd::from(gate_r),))
            .start_method(method)
            .start()
            .unwrap();
        let fds = Process::new(entry!(list_fds), ())
            .start_method(method)
            .start()
            .unwrap()
            .join()
            .unwrap();
        drop(gate_w);
        assert_eq!(other.join().unwrap(), 7);
        let numbers: Vec<u32> = fds.iter().map(|(fd, _)| *fd).collect();
        assert_eq!(numbers.len(), 4, "{method:?}: {fds:?}");
        assert_eq!(&numbers[..3], &[0, 1, 2], "{method:?}: {fds:?}");
        assert_eq!(fds[0].1, "/dev/null", "{method:?}: {fds:?}");
        assert!(fds[3].1.starts_with("socket:"), "{method:?}: {fds:?}");
    }
    drop((stray_r, stray_w));
}

/// Runs `sh -c "exit 3"` and waits for it: how it ended, or why the wait
/// failed.
#[process_entry]
fn waits_for_its_own_child() -> Result<Option<i32>, String> {
    std::process::Command::new("/bin/sh")
        .args(["-c", "exit 3"])
        .status()
        .map(|status| status.code())
        .map_err(|e| e.to_string())
}

#[test]
fn a_child_waits_for_its_own_children_under_both_methods() {
    // The server has the kernel reap its children where it keeps their
    // statuses; a child it forks must get the usual `SIGCHLD` back, or its
    // own waits would find nothing to wait for.
    for method in common::start_methods() {
        let got = Process::new(entry!(waits_for_its_own_child), ())
            .start_method(method)
            .start()
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(got, Ok(Some(3)), "{method:?}");
    }
}

#[test]
fn results_panics_and_exit_codes_under_both_methods() {
    for method in common::start_methods() {
        let start = |code| {
            Process::new(entry!(exits_with), (code,))
                .start_method(method)
                .start()
                .unwrap()
        };
        let value = Process::new(entry!(add), (40, 2))
            .start_method(method)
            .start()
            .unwrap();
        assert_eq!(value.join().unwrap(), 42, "{method:?}");

        let panicked = Process::new(entry!(panics), ("boom".to_string(),))
            .start_method(method)
            .start()
            .unwrap();
        let err = panicked.join().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Panicked, "{method:?}");
        let report = err.panic().unwrap();
        assert_eq!(report.message, "boom");
        assert!(
            report
                .location
                .as_deref()
                .unwrap()
                .contains("forkserver.rs"),
            "{method:?}: {report:?}"
        );
        assert_eq!(err.exitcode(), Some(1));

        let mut exited = start(3);
        assert_eq!(
            exited.join_timeout(common::BOUND).unwrap_err().kind(),
            ErrorKind::Exited
        );
        assert_eq!(exited.exitcode(), Some(3), "{method:?}");
        assert!(!exited.is_alive());
    }
}

#[process_entry]
fn nofile_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

#[test]
fn a_child_has_its_parents_descriptor_limit_under_both_methods() {
    // In its own process, which lowers its limit first.
    run_inner("inner_descriptor_limit", &[]);
}

#[test]
#[ignore = "run by a_child_has_its_parents_descriptor_limit_under_both_methods"]
fn inner_descriptor_limit() {
    if !common::run_by_outer_test(
        INNER,
        "a_child_has_its_parents_descriptor_limit_under_both_methods",
    ) {
        return;
    }
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    // A soft limit under the hard one, before the server starts. The server
    // raises its own (it holds descriptors for every running child); a
    // forked child gets the parent's back.
    let hard = getrlimit(Resource::Nofile).maximum;
    let soft = Some(hard.map_or(512, |h| h.min(512)));
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: soft,
            maximum: hard,
        },
    )
    .unwrap();
    for method in common::start_methods() {
        let child = Process::new(entry!(nofile_limit), ())
            .start_method(method)
            .start()
            .unwrap();
        assert_eq!(child.join().unwrap(), soft, "{method:?}");
    }
}

#[process_entry]
fn checksum(bytes: Vec<u8>) -> u64 {
    bytes.iter().map(|&b| u64::from(b)).sum()
}

#[test]
fn small_and_large_calls_arrive_under_both_methods() {
    // A small call is written before the server forks; a large one (over
    // what the socket buffers) after.
    for method in common::start_methods() {
        for len in [10usize, 4 << 20] {
            let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let want: u64 = bytes.iter().map(|&b| u64::from(b)).sum();
            let child = Process::new(entry!(checksum), (bytes,))
                .start_method(method)
                .start()
                .unwrap();
            assert_eq!(child.join().unwrap(), want, "{method:?}, {len} bytes");
        }
    }
}

#[test]
fn terminate_kill_and_is_alive_under_both_methods() {
    for (method, sig) in common::start_methods()
        .into_iter()
        .flat_map(|m| [(m, libc::SIGTERM), (m, libc::SIGKILL)])
    {
        let (gate_r, _gate_w) = pipe();
        let mut child = Process::new(entry!(blocker), (Fd::from(gate_r),))
            .start_method(method)
            .start()
            .unwrap();
        assert!(child.is_alive(), "{method:?}");
        assert_eq!(child.exitcode(), None);
        assert_eq!(child.join_timeout(Duration::from_millis(1)).unwrap(), None);
        if sig == libc::SIGTERM {
            child.terminate().unwrap();
        } else {
            child.kill().unwrap();
        }
        let err = child.join_timeout(common::BOUND).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Signaled, "{method:?}");
        assert_eq!(err.exitcode(), Some(-sig), "{method:?}");
        assert_eq!(child.exitcode(), Some(-sig), "{method:?}");
        assert!(!child.is_alive());
        // After exit both are no-ops.
        child.terminate().unwrap();
        child.kill().unwrap();
    }
}

#[test]
fn an_exited_child_is_not_alive_at_once_under_both_methods() {
    for method in common::start_methods() {
        for _ in 0..20 {
            let child = Process::new(entry!(exits_with), (0,))
                .start_method(method)
                .start()
                .unwrap();
            assert!(common::exits_within(child.pid(), common::BOUND));
            // Exited (a zombie of its parent, perhaps not yet reaped): no
            // longer alive, and its exit code is known.
            assert!(!child.is_alive(), "{method:?}");
            assert_eq!(child.exitcode(), Some(0), "{method:?}");
        }
    }
}

#[test]
fn a_dropped_running_child_is_reaped_under_both_methods() {
    for method in common::start_methods() {
        let (gate_r, gate_w) = pipe();
        let child = Process::new(entry!(blocker), (Fd::from(gate_r),))
            .start_method(method)
            .start()
            .unwrap();
        let pid = child.pid();
        drop(child);
        assert!(common::state_of(pid).is_some());
        drop(gate_w);
        common::eventually("the dropped child is reaped", || {
            common::state_of(pid).is_none()
        });
    }
}

#[process_entry]
fn kernel_parent_after_gate(gate: Fd) -> u32 {
    block_on(gate);
    std::os::unix::process::parent_id()
}

/// The server of this test process: the kernel parent of a child it forks.
fn server_pid() -> u32 {
    let (_, kernel_parent, _) = Process::new(entry!(whoami), ())
        .start_method(StartMethod::ForkServer)
        .start()
        .unwrap()
        .join()
        .unwrap();
    kernel_parent
}

/// Starts `add(a, b)` under the fork server.
fn forked_add(a: i32, b: i32) -> multiproc::JoinHandle<i32> {
    try_forked_add(a, b).unwrap()
}

fn try_forked_add(a: i32, b: i32) -> multiproc::Result<multiproc::JoinHandle<i32>> {
    Process::new(entry!(add), (a, b))
        .start_method(StartMethod::ForkServer)
        .start()
}

/// Runs the ignored test `name` alone in a fresh copy of this test binary
/// (with `INNER` and `env` set), and checks that it passed.
fn run_inner(name: &str, env: &[(&str, &str)]) {
    common::run_alone_with(name, INNER, env);
}

/// The live (not zombie) children of process `pid`, from /proc, but the
/// fork server's memory holders (`sys/holder.rs`), which share a spare's
/// memory and run nothing.
fn children_of(pid: u32) -> Vec<u32> {
    common::processes()
        .into_iter()
        .filter(|&(child, state, ppid)| state != b'Z' && ppid == pid && !is_holder(child))
        .map(|(child, _, _)| child)
        .collect()
}

/// Whether `pid` is a memory holder of a fork-server child, by its name.
fn is_holder(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "multiproc-hold")
}

/// The variable `key` as this child sees it, and its descriptors.
#[process_entry]
fn env_and_fds(key: String) -> (Option<String>, Vec<(u32, String)>) {
    (std::env::var(&key).ok(), list_fds())
}

#[test]
fn the_memory_holders_of_spares_hold_one_pidfd_and_are_reaped() {
    // Alone in its own process, with the spares of the idle rule, which
    // make holders (back to back, spares make none).
    if !common::fork_server_or_skip() {
        return;
    }
    if !common::kernel_at_least(5, 9) {
        println!("skipped: memory holders need close_range (Linux 5.9)");
        return;
    }
    run_inner("inner_holders", &[("MULTIPROC_TEST_IDLE_SPARES_ONLY", "1")]);
}

#[test]
#[ignore = "run by the_memory_holders_of_spares_hold_one_pidfd_and_are_reaped"]
fn inner_holders() {
    if !common::run_by_outer_test(
        INNER,
        "the_memory_holders_of_spares_hold_one_pidfd_and_are_reaped",
    ) {
        return;
    }
    let server = server_pid();
    let holders = || -> Vec<u32> {
        common::processes()
            .into_iter()
            .filter(|&(pid, state, ppid)| ppid == server && state != b'Z' && is_holder(pid))
            .map(|(pid, _, _)| pid)
            .collect()
    };
    for i in 0..10 {
        // The idle server forks a spare, which makes a holder as it warms
        // up. Not the spare's sockets (they would keep its parent from
        // seeing it end): only the pidfd it waits on. (One whose spare
        // has ended may have closed that too, as it exits.)
        common::eventually("an idle spare's holder waits on its pidfd", || {
            let mut seen = 0;
            for holder in holders() {
                let Ok(fds) = std::fs::read_dir(format!("/proc/{holder}/fd")) else {
                    continue; // gone meanwhile
                };
                let targets: Vec<String> = fds
                    .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                    .map(|t| t.to_string_lossy().into_owned())
                    .collect();
                assert!(
                    targets.iter().all(|t| t == "anon_inode:[pidfd]") && targets.len() <= 1,
                    "holder {holder}: {targets:?}"
                );
                seen += targets.len();
            }
            seen > 0
        });
        assert_eq!(forked_add(i, 1).join().unwrap(), i + 1);
    }
    // The ended children's holders have ended too, and the server reaped
    // them: none is a zombie, and no more are left than live spares.
    common::eventually("the server reaps ended children and holders", || {
        let zombies = common::processes()
            .into_iter()
            .filter(|&(_, state, ppid)| ppid == server && state == b'Z')
            .count();
        zombies == 0 && holders().len() <= children_of(server).len()
    });
}

#[test]
fn an_idle_server_forks_a_spare_that_serves_the_next_start() {
    // Alone in its own process: another test's start would take the spare.
    // And only with the spare of the idle rule: starts in quick succession
    // (the first start asks) would have two announced.
    if !common::fork_server_or_skip() {
        return;
    }
    run_inner("inner_spare", &[("MULTIPROC_TEST_IDLE_SPARES_ONLY", "1")]);
    // And where this process may not take its spares' sockets from them,
    // so that the server sends them.
    run_inner(
        "inner_spare",
        &[
            ("MULTIPROC_TEST_IDLE_SPARES_ONLY", "1"),
            ("MULTIPROC_TEST_NO_FETCH", "1"),
        ],
    );
}

#[test]
#[ignore = "run by an_idle_server_forks_a_spare_that_serves_the_next_start"]
fn inner_spare() {
    if !common::run_by_outer_test(
        INNER,
        "an_idle_server_forks_a_spare_that_serves_the_next_start",
    ) {
        return;
    }
    // By number and target: a socket of the child's may have the number
    // of one of ours.
    let inherited: Vec<(u32, String)> = inheritable_fds()
        .into_iter()
        .filter_map(|fd| {
            let target = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
            Some((fd, target.to_string_lossy().into_owned()))
        })
        .collect();
    let server = server_pid();
    // Asleep, and none of `taken`: a child still exiting (the one
    // `server_pid` joined) is not a spare, nor is one already serving.
    let spare = |taken: &[u32]| {
        children_of(server)
            .into_iter()
            .find(|pid| !taken.contains(pid) && common::state_of(*pid) == Some(b'S'))
    };
    common::eventually("the idle server has forked a spare", || {
        spare(&[]).is_some()
    });
    let first = spare(&[]).unwrap();
    // Asleep again after the fork, it has announced the spare to us.
    common::until_asleep("the server waits after the fork", server);

    // A long call goes to the spare. Nobody tells the server, which finds
    // out by itself and forks the next spare while this one runs; that
    // one must not keep this child's pidfd and status pipe.
    let (gate_r, gate_w) = pipe();
    let other = Process::new(entry!(blocker), (Fd::from(gate_r),))
        .start_method(StartMethod::ForkServer)
        .start()
        .unwrap();
    assert_eq!(other.pid(), first, "the spare serves the next start");
    common::eventually("the server has forked the next spare", || {
        spare(&[first]).is_some()
    });
    let second = spare(&[first]).unwrap();
    common::until_asleep("the server waits after the fork", server);
    let child = Process::new(entry!(env_and_fds), ("MULTIPROC_SPARE_TEST".to_string(),))
        .env("MULTIPROC_SPARE_TEST", "set after the fork")
        .start_method(StartMethod::ForkServer)
        .start()
        .unwrap();
    assert_eq!(child.pid(), second, "the next spare serves the next start");
    let (var, fds) = child.join().unwrap();
    assert_eq!(var.as_deref(), Some("set after the fork"));
    let fds: Vec<(u32, String)> = fds
        .into_iter()
        .filter(|fd| !inherited.contains(fd))
        .collect();
    let numbers: Vec<u32> = fds.iter().map(|(fd, _)| *fd).collect();
    assert_eq!(numbers.len(), 4, "{fds:?}");
    assert_eq!(&numbers[..3], &[0, 1, 2], "{fds:?}");
    assert_eq!(fds[0].1, "/dev/null", "{fds:?}");
    assert!(fds[3].1.starts_with("socket:"), "{fds:?}");
    drop(gate_w);
    assert_eq!(other.join().unwrap(), 7);

    // A spare that dies unused is reaped, and replaced once idle again;
    // the next start passes over the dead one's announcement.
    common::eventually("the server has forked another spare", || {
        spare(&[first, second]).is_some()
    });
    let third = spare(&[first, second]).unwrap();
    common::until_asleep("the server waits after the fork", server);
    kill(third, Signal::KILL);
    common::eventually("the killed spare is reaped", || {
        common::state_of(third).is_none()
    });
    common::eventually("the killed spare is replaced", || {
        spare(&[first, second, third]).is_some()
    });
    let fourth = spare(&[first, second, third]).unwrap();
    common::until_asleep("the server waits after the fork", server);
    let child = Process::new(entry!(whoami), ())
        .start_method(StartMethod::ForkServer)
        .start()
        .unwrap();
    assert_eq!(child.pid(), fourth, "the live spare serves the next start");
    child.join().unwrap();
    assert_eq!(server_pid(), server, "the same server serves on");
}

#[test]
fn starts_in_quick_succession_get_a_spare_forked_at_the_last_end() {
    // Alone in its own process, with a server of its own.
    if !common::fork_server_or_skip() {
        return;
    }
    // Where the kernel keeps exit statuses for pidfds, the parent learns of
    // a child's end from its pidfd, not from the server, and its next start
    // may come before that spare is forked: the order tested here is that
    // of a server reporting statuses itself, as on a kernel before 6.15.
    run_inner("inner_quick", &[("MULTIPROC_TEST_NO_KEPT_EXITS", "1")]);
}

#[test]
#[ignore = "run by starts_in_quick_succession_get_a_spare_forked_at_the_last_end"]
fn inner_quick() {
    use multiproc::__private::fork_server_starts;
    if !common::run_by_outer_test(
        INNER,
        "starts_in_quick_succession_get_a_spare_forked_at_the_last_end",
    ) {
        return;
    }
    // A start that asks the server (no spare was ready) tells it the
    // parent is quick, so the server forks a spare when that child ends,
    // and announces it before it reports the end: the next start, made
    // once `join` has returned, finds that spare, whatever the load.
    // (Starts that find a spare forked while idle prove nothing here; on
    // a quiet machine, most of these starts come less than the idle delay
    // after the last child's end, and without this would all ask.)
    let mut asked_last = false;
    let mut checked = 0;
    for i in 0..500 {
        let (asked, _) = fork_server_starts();
        let child = forked_add(i, 1);
        let asked_now = fork_server_starts().0 > asked;
        assert_eq!(child.join().unwrap(), i + 1);
        if asked_last {
            assert!(!asked_now, "start {i} asked, after a start that asked");
            checked += 1;
            if checked == 20 {
                return;
            }
        }
        asked_last = asked_now;
    }
    // Every start found a spare forked while idle: a machine too slow for
    // starts in quick succession.
    eprintln!("skipped: only {checked} starts followed one that asked");
}

#[test]
fn starts_in_quick_succession_find_two_spares() {
    // Alone in its own process, with a server of its own.
    if !common::fork_server_or_skip() {
        return;
    }
    run_inner("inner_two_spares", &[]);
}

#[test]
#[ignore = "run by starts_in_quick_succession_find_two_spares"]
fn inner_two_spares() {
    use multiproc::__private::{fork_server_spares, fork_server_starts};
    if !common::run_by_outer_test(INNER, "starts_in_quick_succession_find_two_spares") {
        return;
    }
    // A start that asks the server makes the parent quick; when that
    // child ends, the server forks two spares (the second after the
    // status, off the path of the next start). Two starts made then, with
    // no join between, both find a spare.
    let mut asked = false;
    for i in 0..500 {
        let before = fork_server_starts().0;
        let child = forked_add(i, 1);
        asked = fork_server_starts().0 > before;
        assert_eq!(child.join().unwrap(), i + 1);
        if asked {
            break;
        }
    }
    if !asked {
        // Every start found a spare forked while idle.
        eprintln!("skipped: no start asked the server");
        return;
    }
    common::eventually("the parent holds two spares", || fork_server_spares() == 2);
    let before = fork_server_starts();
    let first = forked_add(1, 1);
    let second = forked_add(2, 1);
    assert_eq!(fork_server_starts(), (before.0, before.1 + 2));
    assert_ne!(first.pid(), second.pid());
    assert_eq!(first.join().unwrap(), 2);
    assert_eq!(second.join().unwrap(), 3);
}

#[test]
fn a_start_waits_for_the_spare_being_forked_rather_than_ask() {
    // Alone in its own process, whose server takes 2 s between saying a
    // spare is coming and forking it.
    if !common::fork_server_or_skip() {
        return;
    }
    run_inner(
        "inner_spare_coming",
        &[("MULTIPROC_TEST_SPARE_DELAY_MS", "2000")],
    );
}

#[test]
#[ignore = "run by a_start_waits_for_the_spare_being_forked_rather_than_ask"]
fn inner_spare_coming() {
    use multiproc::__private::{
        fork_server_coming, fork_server_drop_spares, fork_server_spares, fork_server_starts,
    };
    if !common::run_by_outer_test(
        INNER,
        "a_start_waits_for_the_spare_being_forked_rather_than_ask",
    ) {
        return;
    }
    // The first start brings the server up and asks it; as that child
    // ends, the server says a spare is coming, and forks it 2 s later.
    // (Where the server reports the end, a first spare may come before
    // that report, and a second be coming after it: the first is dropped.)
    assert_eq!(forked_add(1, 1).join().unwrap(), 2);
    fork_server_drop_spares();
    common::eventually("the server says a spare is coming", || {
        fork_server_coming() >= 1 && fork_server_spares() == 0
    });
    let before = fork_server_starts();
    let child = forked_add(2, 1);
    // Served by that spare: no request, and no fork of its own.
    assert_eq!(fork_server_starts(), (before.0, before.1 + 1));
    assert_eq!(child.join().unwrap(), 3);
}

#[test]
fn a_start_after_an_unreported_end_waits_for_the_server_rather_than_ask() {
    // Alone in its own process, whose server handles each child's end 1 s
    // late and forks no spare while idle.
    if !common::fork_server_or_skip() {
        return;
    }
    if !common::kernel_keeps_exits() {
        // `join` then waits for the server's report, and no end is ever
        // unreported when a start looks for a spare.
        eprintln!("skipped: this kernel keeps no exit status for pidfds");
        return;
    }
    run_inner(
        "inner_unreported_end",
        &[("MULTIPROC_TEST_LATE_REPORTS_MS", "1000")],
    );
}

#[test]
#[ignore = "run by a_start_after_an_unreported_end_waits_for_the_server_rather_than_ask"]
fn inner_unreported_end() {
    use multiproc::__private::{fork_server_coming, fork_server_spares, fork_server_starts};
    if !common::run_by_outer_test(
        INNER,
        "a_start_after_an_unreported_end_waits_for_the_server_rather_than_ask",
    ) {
        return;
    }
    // The first start brings the server up and asks it, which makes the
    // parent quick: the server forks a spare when that child ends, before
    // it reports the end. `join` learns of the end from the child's pidfd,
    // a second before the server handles it.
    assert_eq!(forked_add(1, 1).join().unwrap(), 2);
    if fork_server_spares() != 0 || fork_server_coming() != 0 {
        eprintln!("skipped: the server handled the end before the next start");
        return;
    }
    let before = fork_server_starts();
    let child = forked_add(2, 1);
    // Served by that spare: the start waited for the server, and did not
    // ask for a fork behind it.
    assert_eq!(fork_server_starts(), (before.0, before.1 + 1));
    assert_eq!(child.join().unwrap(), 3);
}

/// The spares of this process waiting for their requests, once one is:
/// the children of its server asleep (not one still exiting, nor one
/// warming up), once this process holds a spare.
fn held_spares() -> Vec<u32> {
    let server = server_pid();
    let asleep = || -> Vec<u32> {
        children_of(server)
            .into_iter()
            .filter(|&pid| common::state_of(pid) == Some(b'S'))
            .collect()
    };
    common::eventually("a spare waits for its request", || {
        multiproc::__private::fork_server_spares() >= 1 && !asleep().is_empty()
    });
    asleep()
}

#[test]
fn spares_end_when_dropped_or_when_their_parent_is_killed() {
    // Alone in its own process, which drops its spares; and where the
    // server sends each spare's socket rather than leave it in the spare
    // for this process to take.
    if !common::fork_server_or_skip() {
        return;
    }
    run_inner("inner_drop_spares", &[]);
    run_inner("inner_drop_spares", &[("MULTIPROC_TEST_NO_FETCH", "1")]);
    // A parent killed with its spares: they end too (a spare may hold the
    // parent's end of its socket, and then watches a pidfd of the parent).
    let (gate_r, _gate_w) = pipe();
    let (report_r, report_w) = pipe();
    let middle = Process::new(
        entry!(middle_with_spares),
        (Fd::from(gate_r), Fd::from(report_w)),
    )
    .start_method(StartMethod::Spawn)
    .start()
    .unwrap();
    let mut bytes = Vec::new();
    std::fs::File::from(report_r)
        .read_to_end(&mut bytes)
        .unwrap();
    let spares: Vec<u32> = bytes
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert!(!spares.is_empty());
    middle.kill().unwrap();
    assert_eq!(middle.join().unwrap_err().exitcode(), Some(-9));
    for spare in spares {
        assert!(
            common::exits_within(spare, common::BOUND),
            "spare {spare} outlived its SIGKILLed parent"
        );
    }
}

#[process_entry]
fn middle_with_spares(gate: Fd, report: Fd) {
    let spares = held_spares();
    let mut report = std::fs::File::from(report.into_owned_fd());
    for spare in spares {
        report.write_all(&spare.to_le_bytes()).unwrap();
    }
    drop(report);
    block_on(gate);
}

#[test]
#[ignore = "run by spares_end_when_dropped_or_when_their_parent_is_killed"]
fn inner_drop_spares() {
    if !common::run_by_outer_test(
        INNER,
        "spares_end_when_dropped_or_when_their_parent_is_killed",
    ) {
        return;
    }
    let spares = held_spares();
    assert!(!spares.is_empty());
    // Dropped again while any lives: one may have been announced only
    // after it was seen waiting (the server forks two in quick succession).
    common::eventually("the dropped spares have ended", || {
        multiproc::__private::fork_server_drop_spares();
        spares
            .iter()
            .all(|&spare| common::state_of(spare).is_none_or(|state| state == b'Z'))
    });
    // The server serves on.
    assert_eq!(forked_add(1, 1).join().unwrap(), 2);
}

#[test]
fn a_spare_its_dead_server_never_announced_ends() {
    // Alone in its own process, whose server forks no spare while idle and
    // sleeps 3 s between forking each spare and announcing it: it is
    // killed meanwhile. (Where this process may not take descriptors from
    // the spares, the server holds their sockets' other ends until the
    // announcement, and its death ends them.)
    if !common::fork_server_or_skip() {
        return;
    }
    let env = [
        ("MULTIPROC_TEST_ANNOUNCE_DELAY_MS", "3000"),
        ("MULTIPROC_TEST_LATE_REPORTS_MS", "0"),
    ];
    run_inner("inner_unannounced_spare", &env);
    run_inner(
        "inner_unannounced_spare",
        &[env[0], env[1], ("MULTIPROC_TEST_NO_FETCH", "1")],
    );
}

#[test]
#[ignore = "run by a_spare_its_dead_server_never_announced_ends"]
fn inner_unannounced_spare() {
    if !common::run_by_outer_test(INNER, "a_spare_its_dead_server_never_announced_ends") {
        return;
    }
    // The first start asks the server, which then forks a spare as that
    // child ends, and sleeps before announcing it. This process reads no
    // announcement until its next start, so it has taken the socket of no
    // spare when the server dies.
    let server = server_pid();
    let mut spares = Vec::new();
    common::eventually("the server has forked a spare", || {
        spares = children_of(server)
            .into_iter()
            .filter(|&pid| common::state_of(pid) == Some(b'S'))
            .collect();
        !spares.is_empty()
    });
    assert_eq!(multiproc::__private::fork_server_spares(), 0);
    kill(server, Signal::KILL);
    for spare in spares {
        assert!(
            common::exits_within(spare, common::BOUND),
            "spare {spare} outlived its server, unannounced"
        );
    }
    // The next start passes over what the dead server said, and brings up
    // a new one.
    assert_eq!(forked_add(1, 1).join().unwrap(), 2);
}

#[test]
fn starts_ask_when_the_server_cannot_fork_spares() {
    // Alone in its own process, whose server fails to fork any spare.
    if !common::fork_server_or_skip() {
        return;
    }
    run_inner("inner_no_spare", &[("MULTIPROC_TEST_NO_SPARE", "1")]);
}

#[test]
#[ignore = "run by starts_ask_when_the_server_cannot_fork_spares"]
fn inner_no_spare() {
    use multiproc::__private::fork_server_starts;
    if !common::run_by_outer_test(INNER, "starts_ask_when_the_server_cannot_fork_spares") {
        return;
    }
    // Each child's end (the starts are quick) and each idle spell makes
    // the server try a spare, which fails: every start asks instead.
    for i in 0..20 {
        let child = forked_add(i, 1);
        assert_eq!(child.join().unwrap(), i + 1);
    }
    assert_eq!(fork_server_starts(), (20, 0));
}

#[test]
fn a_dead_server_fails_pending_starts_and_is_replaced() {
    // Alone in its own process: it kills that process's server, which
    // would disturb any other test using it.
    if !common::fork_server_or_skip() {
        return;
    }
    run_inner("inner_dead_server", &[]);
    // And with the server slow to fork its spares once it has said one is
    // coming: a start waiting for that spare fails too when it dies.
    run_inner(
        "inner_dead_server",
        &[("MULTIPROC_TEST_SPARE_DELAY_MS", "500")],
    );
}

#[test]
#[ignore = "run by a_dead_server_fails_pending_starts_and_is_replaced"]
fn inner_dead_server() {
    if !common::run_by_outer_test(INNER, "a_dead_server_fails_pending_starts_and_is_replaced") {
        return;
    }
    let server = server_pid();

    // Its children run on without it, and join neither hangs nor loses
    // their result.
    let (gate_r, gate_w) = pipe();
    let mut orphan = Process::new(entry!(kernel_parent_after_gate), (Fd::from(gate_r),))
        .start_method(StartMethod::ForkServer)
        .start()
        .unwrap();
    let (gate2_r, _gate2_w) = pipe();
    let mut lost = Process::new(entry!(blocker), (Fd::from(gate2_r),))
        .start_method(StartMethod::ForkServer)
        .start()
        .unwrap();
    kill(server, Signal::KILL);
    assert!(common::exits_within(server, common::BOUND));
    // The server was our child: it is reaped, not left a zombie.
    common::eventually("the killed server is reaped", || {
        common::state_of(server).is_none()
    });
    assert!(orphan.is_alive());
    drop(gate_w);
    let reparented = orphan.join_timeout(common::BOUND).unwrap().unwrap();
    assert_ne!(reparented, server);
    // A child that ends without a result after its server died: how it
    // ended is unknown, and join says so instead of hanging.
    lost.kill().unwrap();
    let err = lost.join_timeout(common::BOUND).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Exited, "{err}");
    assert_eq!(err.exitcode(), None, "{err}");
    assert!(err.to_string().contains("fork server died"), "{err}");
    assert!(!lost.is_alive());

    // The next start brings up a new server.
    let second = server_pid();
    assert_ne!(second, server);

    // A start waiting for a server that dies fails, naming it. Stopped,
    // the server forks no spare; the one it may have announced is killed,
    // so that the start has to ask the server. (With a slow spare fork,
    // the server is stopped once it has said a spare is coming, and the
    // start waits for that spare instead.)
    if std::env::var_os("MULTIPROC_TEST_SPARE_DELAY_MS").is_some() {
        multiproc::__private::fork_server_drop_spares();
        common::eventually("the server says a spare is coming", || {
            multiproc::__private::fork_server_coming() >= 1
        });
    }
    kill(second, Signal::STOP);
    for spare in children_of(second) {
        kill(spare, Signal::KILL);
        common::eventually("the spare is dead", || {
            common::state_of(spare).is_none_or(|state| state == b'Z')
        });
    }
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let pending = std::thread::spawn(move || {
        tid_tx
            .send(rustix::thread::gettid().as_raw_pid() as u32)
            .unwrap();
        Process::new(entry!(add), (1, 1))
            .start_method(StartMethod::ForkServer)
            .start()
            .map(|h| h.pid())
    });
    let tid = tid_rx.recv().unwrap();
    common::until_asleep("the start waits for the stopped server", tid);
    kill(second, Signal::KILL);
    let err = pending.join().unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Spawn, "{err}");
    assert!(err.to_string().contains("fork server"), "{err}");
    let third = server_pid();
    assert!(third != second && third != server);
}

/// Starts a daemon (with `method`) that blocks on `gate`, reports its pid
/// and its kernel parent's on `report`, then blocks too.
#[process_entry]
fn middle_with_daemon(method: u8, gate: Fd, report: Fd) {
    let method = BOTH[usize::from(method)];
    let daemon = Process::new(entry!(blocker), (gate.try_clone().unwrap(),))
        .daemon(true)
        .start_method(method)
        .start()
        .unwrap();
    let (_, kernel_parent, _) = Process::new(entry!(whoami), ())
        .start_method(method)
        .start()
        .unwrap()
        .join()
        .unwrap();
    let mut report = std::fs::File::from(report.into_owned_fd());
    report.write_all(&daemon.pid().to_le_bytes()).unwrap();
    report.write_all(&kernel_parent.to_le_bytes()).unwrap();
    drop(report);
    block_on(gate);
}

#[test]
fn a_daemon_dies_when_its_parent_is_killed_under_both_methods() {
    for method in common::start_methods() {
        let index = BOTH.iter().position(|&m| m == method).unwrap();
        // The gate's write end stays here: only the parent-death signal
        // (through the server, under ForkServer) can end the daemon.
        let (gate_r, _gate_w) = pipe();
        let (report_r, report_w) = pipe();
        let middle = Process::new(
            entry!(middle_with_daemon),
            (index as u8, Fd::from(gate_r), Fd::from(report_w)),
        )
        .start()
        .unwrap();
        let mut bytes = [0u8; 8];
        std::fs::File::from(report_r)
            .read_exact(&mut bytes)
            .unwrap();
        let daemon = u32::from_le_bytes(bytes[..4].try_into().unwrap());
        // Under ForkServer, the middle's fork server; under Spawn, the middle.
        let kernel_parent = u32::from_le_bytes(bytes[4..].try_into().unwrap());
        assert!(common::state_of(daemon).is_some());
        middle.kill().unwrap();
        assert_eq!(middle.join().unwrap_err().exitcode(), Some(-9));
        assert!(
            common::exits_within(daemon, common::BOUND),
            "{method:?}: daemon {daemon} outlived its SIGKILLed parent"
        );
        assert!(
            common::exits_within(kernel_parent, common::BOUND),
            "{method:?}: {kernel_parent}, the daemon's parent, outlived the SIGKILLed middle"
        );
    }
}

#[process_entry]
fn print_after_gate(gate: Fd) {
    block_on(gate);
    println!("child done");
}

const INNER: &str = "MULTIPROC_FORKSERVER_INNER";

/// Run by `exit_waits_for_unjoined_forked_children` in a fresh copy of this
/// test binary, with `MULTIPROC_START_METHOD=forkserver`: leaves a child
/// running and returns.
#[test]
#[ignore = "run by exit_waits_for_unjoined_forked_children"]
fn inner_main_returns_with_forked_child_running() {
    if !common::run_by_outer_test(INNER, "exit_waits_for_unjoined_forked_children") {
        return;
    }
    assert_eq!(multiproc::get_start_method(), StartMethod::ForkServer);
    let stdin = rustix::io::fcntl_dupfd_cloexec(std::io::stdin().as_fd(), 3).unwrap();
    let child = Process::new(entry!(print_after_gate), (Fd::from(stdin),))
        .start()
        .unwrap();
    let (_, kernel_parent, _) = Process::new(entry!(whoami), ())
        .start()
        .unwrap()
        .join()
        .unwrap();
    assert_ne!(
        kernel_parent,
        std::process::id(),
        "the default is not forkserver"
    );
    std::mem::forget(child);
    println!("main returning");
}

#[test]
fn exit_waits_for_unjoined_forked_children() {
    if !common::fork_server_or_skip() {
        return;
    }
    common::exit_waits_for_the_gated_child(
        "inner_main_returns_with_forked_child_running",
        INNER,
        &[("MULTIPROC_START_METHOD", "forkserver")],
        Duration::from_millis(300),
    );
}

#[test]
fn a_bad_start_method_variable_fails_starts_with_a_clear_error() {
    run_inner("inner_bad_variable", &[("MULTIPROC_START_METHOD", "fork")]);
}

#[test]
#[ignore = "run by a_bad_start_method_variable_fails_starts_with_a_clear_error"]
fn inner_bad_variable() {
    if !common::run_by_outer_test(
        INNER,
        "a_bad_start_method_variable_fails_starts_with_a_clear_error",
    ) {
        return;
    }
    assert_eq!(multiproc::get_start_method(), StartMethod::Spawn);
    let err = Process::new(entry!(add), (1, 2)).start().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Spawn);
    assert!(err.to_string().contains("MULTIPROC_START_METHOD"), "{err}");
    if !common::fork_server_or_skip() {
        return;
    }
    // Chosen explicitly, a method needs no variable.
    let ok = forked_add(1, 2);
    assert_eq!(ok.join().unwrap(), 3);
    multiproc::set_start_method(StartMethod::ForkServer).unwrap();
    assert_eq!(multiproc::get_start_method(), StartMethod::ForkServer);
    assert_eq!(
        Process::new(entry!(add), (2, 2))
            .start()
            .unwrap()
            .join()
            .unwrap(),
        4
    );
}

/// The variable `key` as this child sees it.
#[process_entry]
fn get_var(key: String) -> Option<String> {
    std::env::var(&key).ok()
}

/// How many variables this child's environment holds.
#[process_entry]
fn var_count() -> usize {
    std::env::vars_os().count()
}

#[test]
fn environment_changes_a_child_cannot_hold_fail_or_apply_as_under_spawn() {
    for method in common::start_methods() {
        // No environment can hold a NUL byte: the start fails, no child runs.
        let err = Process::new(entry!(get_var), ("K".to_string(),))
            .env("K", "a\0b")
            .start_method(method)
            .start()
            .map(|_| ())
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Spawn, "{method:?}: {err}");
        // A name with `=` is the raw entry `exec` makes of it ("A=B=x"),
        // which reads back as `A`; the child does not abort.
        let got = Process::new(entry!(get_var), ("A".to_string(),))
            .env("A=B", "x")
            .start_method(method)
            .start()
            .unwrap()
            .join();
        assert_eq!(got.ok(), Some(Some("B=x".to_string())), "{method:?}");
    }
}

#[test]
fn env_clear_clears_names_that_set_var_refuses() {
    run_inner("inner_env_clear_odd", &[("=ODD", "inherited")]);
}

#[test]
#[ignore = "run by env_clear_clears_names_that_set_var_refuses"]
fn inner_env_clear_odd() {
    if !common::run_by_outer_test(INNER, "env_clear_clears_names_that_set_var_refuses") {
        return;
    }
    assert!(
        std::env::vars_os().any(|(key, _)| key == "=ODD"),
        "the odd variable was not inherited"
    );
    for method in common::start_methods() {
        let got = Process::new(entry!(var_count), ())
            .env_clear()
            .env("ONLY", "1")
            .start_method(method)
            .start()
            .unwrap()
            .join();
        assert_eq!(got.ok(), Some(1), "{method:?}");
    }
}

#[test]
fn a_child_of_a_stopped_server_is_not_alive_once_it_exits_and_joins() {
    if !common::fork_server_or_skip() {
        return;
    }
    run_inner("inner_stopped_server", &[]);
    // And as on a kernel that keeps no exit status for pidfds (before
    // 6.15), where the server reaps its children itself.
    run_inner(
        "inner_stopped_server",
        &[("MULTIPROC_TEST_NO_KEPT_EXITS", "1")],
    );
}

#[test]
#[ignore = "run by a_child_of_a_stopped_server_is_not_alive_once_it_exits_and_joins"]
fn inner_stopped_server() {
    if !common::run_by_outer_test(
        INNER,
        "a_child_of_a_stopped_server_is_not_alive_once_it_exits_and_joins",
    ) {
        return;
    }
    let server = server_pid();
    let (gate_r, gate_w) = pipe();
    let mut child = Process::new(entry!(blocker), (Fd::from(gate_r),))
        .start_method(StartMethod::ForkServer)
        .start()
        .unwrap();
    let pid = child.pid();
    kill(server, Signal::STOP);
    common::eventually("the server stops", || {
        common::state_of(server) == Some(b'T')
    });
    drop(gate_w);
    // The child exits; its stopped server cannot report how.
    assert!(common::exits_within(pid, common::BOUND));
    let alive = child.is_alive();
    let got = child.join_timeout(common::BOUND);
    kill(server, Signal::CONT);
    assert!(!alive, "an exited child looked alive");
    assert_eq!(got.ok(), Some(Some(7)), "join_timeout on an exited child");
    // Its server never reported its status, which is unknown, unless the
    // kernel reaped it and kept it for the child's pidfd (Linux 6.15 and
    // later, where the server has it reap its children).
    let kept = common::kernel_keeps_exits();
    assert_eq!(child.exitcode(), kept.then_some(0));
    assert!(!child.is_alive());
}

#[test]
fn a_start_fails_rather_than_waits_for_a_stopped_server() {
    // Every start asks the server (no spare), so a start needs its reply.
    if !common::fork_server_or_skip() {
        return;
    }
    run_inner(
        "inner_start_on_stopped_server",
        &[("MULTIPROC_TEST_NO_SPARE", "1")],
    );
}

#[test]
#[ignore = "run by a_start_fails_rather_than_waits_for_a_stopped_server"]
fn inner_start_on_stopped_server() {
    if !common::run_by_outer_test(
        INNER,
        "a_start_fails_rather_than_waits_for_a_stopped_server",
    ) {
        return;
    }
    // A daemon the server forked before it stopped.
    let (gate_r, gate_w) = pipe();
    let daemon = Process::new(entry!(blocker), (Fd::from(gate_r),))
        .daemon(true)
        .start_method(StartMethod::ForkServer)
        .start()
        .unwrap();
    let server = server_pid();
    kill(server, Signal::STOP);
    common::eventually("the server stops", || {
        common::state_of(server) == Some(b'T')
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(try_forked_add(1, 2).map(drop).map_err(|e| e.to_string()));
    });
    let got = rx.recv_timeout(common::BOUND);
    kill(server, Signal::CONT);
    let err = match got {
        Ok(Err(err)) => err,
        Ok(Ok(())) => panic!("a stopped server started a child"),
        Err(_) => panic!("the start waited for a stopped server"),
    };
    assert!(err.contains("did not answer"), "{err}");
    // The stopped server was set aside: the next start has a new one.
    assert_eq!(forked_add(2, 3).join().unwrap(), 5);
    assert_ne!(server_pid(), server);
    // Set aside, not killed: the daemon it forked lives on (its
    // parent-death signal follows that server), and its status comes.
    drop(gate_w);
    assert_eq!(daemon.join().unwrap(), 7);
    assert!(
        common::state_of(server).is_some_and(|state| state != b'Z'),
        "the server set aside was ended"
    );
}

/// Writes `id` to `out` (a pipe shared by many children) and returns it.
#[process_entry]
fn mark(id: u32, out: Fd) -> u32 {
    let mut out = std::fs::File::from(out.into_owned_fd());
    let _ = out.write_all(&id.to_le_bytes());
    id
}

#[test]
fn a_start_that_fails_as_the_server_dies_runs_nothing() {
    // Every start asks the server (no spare), so the server can be killed
    // between its fork and its reply.
    if !common::fork_server_or_skip() {
        return;
    }
    run_inner("inner_failed_start", &[("MULTIPROC_TEST_NO_SPARE", "1")]);
}

#[test]
#[ignore = "run by a_start_that_fails_as_the_server_dies_runs_nothing"]
fn inner_failed_start() {
    if !common::run_by_outer_test(INNER, "a_start_that_fails_as_the_server_dies_runs_nothing") {
        return;
    }
    let me = std::process::id();
    let (r, w) = pipe();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Kills the server whenever it has a child: often between a fork and
    // its reply.
    let killer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let ours: Vec<u32> = multiproc::active_children()
                    .iter()
                    .map(|c| c.pid())
                    .collect();
                for pid in children_of(me) {
                    let path = format!("/proc/{pid}/task/{pid}/children");
                    let has_children = std::fs::read_to_string(&path)
                        .is_ok_and(|children| !children.trim().is_empty());
                    if !ours.contains(&pid) && has_children {
                        kill(pid, Signal::KILL);
                    }
                }
            }
        })
    };
    let mut failed = Vec::new();
    for id in 0..400u32 {
        let out = Fd::from(rustix::io::dup(&w).unwrap());
        match Process::new(entry!(mark), (id, out))
            .start_method(StartMethod::ForkServer)
            .start()
        {
            Ok(handle) => drop(handle),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Spawn, "{e}");
                failed.push(id);
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    killer.join().unwrap();
    drop(w);
    // Every child has ended (or never got its call) once all writers close.
    let mut bytes = Vec::new();
    std::fs::File::from(r).read_to_end(&mut bytes).unwrap();
    let ran: Vec<u32> = bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let ran_anyway: Vec<u32> = failed
        .iter()
        .copied()
        .filter(|id| ran.contains(id))
        .collect();
    assert!(
        ran_anyway.is_empty(),
        "entries ran for failed starts: {ran_anyway:?}"
    );
    if failed.is_empty() {
        eprintln!("skipped: no start failed, so none could run by mistake");
    }
}

#[test]
fn a_descriptor_left_inheritable_is_not_kept_open_by_the_server() {
    if !common::fork_server_or_skip() {
        return;
    }
    run_inner("inner_inheritable_fd", &[]);
}

#[test]
#[ignore = "run by a_descriptor_left_inheritable_is_not_kept_open_by_the_server"]
fn inner_inheritable_fd() {
    if !common::run_by_outer_test(
        INNER,
        "a_descriptor_left_inheritable_is_not_kept_open_by_the_server",
    ) {
        return;
    }
    let (r, w) = pipe();
    // Inheritable, as one a C library opened might be.
    rustix::io::fcntl_setfd(&w, rustix::io::FdFlags::empty()).unwrap();
    // The first start starts the server while `w` is open.
    assert_eq!(forked_add(1, 2).join().unwrap(), 3);
    drop(w);
    assert_eq!(forked_add(2, 2).join().unwrap(), 4);
    // With every writer gone, the reader sees the end of the pipe.
    let mut fds = [rustix::event::PollFd::new(&r, rustix::event::PollFlags::IN)];
    let bound = rustix::event::Timespec {
        tv_sec: common::BOUND.as_secs() as i64,
        tv_nsec: 0,
    };
    let ready = rustix::event::poll(&mut fds, Some(&bound)).unwrap();
    assert_eq!(ready, 1, "the pipe's write end is still open somewhere");
}
