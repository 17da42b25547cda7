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

/// The test running on this thread (libtest names its threads after
/// them), for a message.
fn this_test() -> String {
    match std::thread::current().name() {
        Some(name) if name != "main" => name.to_string(),
        _ => "this test".to_string(),
    }
}

/// Why the fork server cannot run here, for a message.
const NO_FORK_SERVER: &str = "the fork server needs pidfds, which this system does not give \
    (a kernel before 5.4, a seccomp profile that refuses pidfd_open, or MULTIPROC_NO_PIDFD)";

/// Whether this system can start children with the fork server (as
/// [`multiproc::get_all_start_methods`] says). Otherwise a test that needs
/// it says that it is skipped, and why.
pub fn fork_server_or_skip() -> bool {
    if multiproc::get_all_start_methods().contains(&multiproc::StartMethod::ForkServer) {
        return true;
    }
    println!("skipped: {}: {NO_FORK_SERVER}", this_test());
    false
}

/// The start methods a test runs under: both where the fork server can
/// run; otherwise `Spawn` alone, and the test says that its fork-server
/// half is skipped, and why.
pub fn start_methods() -> Vec<multiproc::StartMethod> {
    let methods = multiproc::get_all_start_methods();
    if !methods.contains(&multiproc::StartMethod::ForkServer) {
        println!(
            "skipped: {} under the fork server: {NO_FORK_SERVER}",
            this_test()
        );
    }
    methods
}

/// Runs the ignored test `inner` alone in a fresh copy of this test binary,
/// with `var` set (see [`run_by_outer_test`]), checks that it passed, and
/// relays what it says it skipped.
pub fn run_alone(inner: &str, var: &str) {
    run_alone_with(inner, var, &[]);
}

/// [`run_alone`] with `env` set for the inner test too.
pub fn run_alone_with(inner: &str, var: &str, env: &[(&str, &str)]) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", inner, "--ignored", "--nocapture"])
        .env(var, "1")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "{stdout}\n{stderr}");
    let said = stdout.lines().chain(stderr.lines());
    for line in said.filter(|line| line.starts_with("skipped")) {
        println!("{inner}: {line}");
    }
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

/// True once `pid` has exited, within `bound`; watched through a pidfd.
pub fn exits_within(pid: u32, bound: Duration) -> bool {
    let Some(pid) = rustix::process::Pid::from_raw(pid as i32) else {
        return true;
    };
    let Ok(pidfd) = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) else {
        return true; // already gone
    };
    let ts = rustix::event::Timespec {
        tv_sec: bound.as_secs() as i64,
        tv_nsec: bound.subsec_nanos() as _,
    };
    let mut fds = [rustix::event::PollFd::new(
        &pidfd,
        rustix::event::PollFlags::IN,
    )];
    rustix::event::poll(&mut fds, Some(&ts)).expect("poll") == 1
}

/// Runs the ignored test `inner` in a fresh copy of this test binary (with
/// `var` set, and `env`), which prints "main returning" once it has left
/// a child running that prints "child done" when a byte reaches the inner
/// program's stdin. Checks that the program does not exit while that child
/// runs (for `quiet`), and that it exits with the child's output once the
/// child is let go.
pub fn exit_waits_for_the_gated_child(
    inner: &str,
    var: &str,
    env: &[(&str, &str)],
    quiet: Duration,
) {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    let mut inner = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            inner,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(var, "1")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut gate = inner.stdin.take().unwrap();
    let mut lines = BufReader::new(inner.stdout.take().unwrap()).lines();
    assert!(
        lines
            .by_ref()
            .map_while(Result::ok)
            .any(|l| l.contains("main returning")),
        "inner test did not run"
    );
    // Its main has returned, yet it must not exit while its child runs.
    assert!(!exits_within(inner.id(), quiet));
    gate.write_all(b"go").unwrap();
    drop(gate);
    let status = inner.wait().unwrap();
    assert!(status.success(), "{status}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.contains("child done")), "{rest:?}");
}

/// A message that serializes as the handle it holds, if any, else as its
/// number, and always deserializes as a number: what a peer that sends a
/// handle where the receiver expects none looks like on the wire.
#[derive(Debug)]
pub struct HandleOrNumber(pub Option<multiproc::Fd>, pub u32);

impl serde::Serialize for HandleOrNumber {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Some(fd) => fd.serialize(s),
            None => self.1.serialize(s),
        }
    }
}

impl<'de> serde::Deserialize<'de> for HandleOrNumber {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<HandleOrNumber, D::Error> {
        u32::deserialize(d).map(|n| HandleOrNumber(None, n))
    }
}

/// Whether every copy of a pipe's write end is closed, so that its read end
/// `r` reads the end of the stream, within [`BOUND`].
pub fn write_end_closed(r: &std::os::fd::OwnedFd) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let bound = Timespec {
        tv_sec: BOUND.as_secs() as i64,
        tv_nsec: 0,
    };
    let mut fds = [PollFd::new(r, PollFlags::IN)];
    matches!(rustix::event::poll(&mut fds, Some(&bound)), Ok(1))
        && matches!(rustix::io::read(r, &mut [0u8; 1]), Ok(0))
}

/// Whether this kernel keeps how a reaped process ended for its pidfd
/// (Linux 6.15 and later), from its release number, and the test process
/// does not act as on an older kernel (`MULTIPROC_TEST_NO_KEPT_EXITS`).
pub fn kernel_keeps_exits() -> bool {
    std::env::var_os("MULTIPROC_TEST_NO_KEPT_EXITS").is_none() && kernel_at_least(6, 15)
}

/// Whether this kernel's release is `major.minor` or later.
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    let uname = rustix::system::uname();
    let release = uname.release().to_string_lossy();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0)) >= (major, minor)
}
