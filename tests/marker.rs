//! The bootstrap marker variable is input like any other: a value that does
//! not check out is reported and `main` runs; a set-user-ID copy of the
//! program never acts on it; a child whose parent is gone runs nothing.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};

const MARKER: &str = "__MULTIPROC_BOOTSTRAP_V1";
const INNER: &str = "MULTIPROC_MARKER_INNER";

#[multiproc::process_entry]
fn whoami() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// What `main` (the test harness) does when it runs: this test prints a
/// line that shows it.
#[test]
#[ignore = "run by the tests below in a fresh process"]
fn inner_main_ran() {
    if !common::run_by_outer_test(INNER, "the marker tests") {
        return;
    }
    println!("main ran as uid {}", rustix::process::geteuid().as_raw());
}

fn run(program: &std::path::Path, marker: &str, stdin: Stdio, wrap: &[&str]) -> Output {
    let mut args: Vec<String> = wrap.iter().map(|s| s.to_string()).collect();
    args.push(program.display().to_string());
    let mut command = Command::new(&args[0]);
    command
        .args(&args[1..])
        .args(["--exact", "inner_main_ran", "--ignored", "--nocapture"])
        .env(MARKER, marker)
        .env(INNER, "1")
        .stdin(stdin);
    command.output().expect("run the test binary")
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

#[test]
fn a_marker_that_does_not_check_out_is_reported_and_main_runs() {
    let me = std::env::current_exe().unwrap();
    let valid_but_no_socket = format!("{}:0:1:marker::whoami", std::process::id());
    for marker in ["", "floor", "1:2:3", valid_but_no_socket.as_str()] {
        let out = run(&me, marker, Stdio::null(), &[]);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "{marker:?}: {stdout}{stderr}");
        assert!(
            stdout.contains("main ran"),
            "{marker:?}: main did not run: {stdout}{stderr}"
        );
        assert!(
            stderr.contains(&format!("ignoring the variable {MARKER}")),
            "{marker:?}: not reported: {stderr}"
        );
    }
}

#[test]
fn a_child_whose_parent_is_not_the_one_named_runs_nothing() {
    // A control socket and a well-formed marker, but another parent: the
    // parent is gone (or the marker is not its). No entry, and no `main`.
    let me = std::env::current_exe().unwrap();
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let marker = format!("1:0:{}:marker::whoami", multiproc::entries().len());
    let out = run(
        &me,
        &marker,
        Stdio::from(std::os::fd::OwnedFd::from(theirs)),
        &[],
    );
    drop(ours);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(!stdout.contains("main ran"), "{stdout}");
    assert!(
        stderr.contains("the parent process 1 of this child is gone"),
        "{stderr}"
    );
}

#[test]
fn a_set_user_id_copy_never_acts_on_the_marker() {
    // A set-user-ID-root copy run by an unprivileged user, handed a
    // genuine-looking call: it must run `main` (whose checks stand), not
    // the entry as root.
    if !rustix::process::geteuid().is_root() {
        println!("skipped: making a set-user-ID-root copy needs root");
        return;
    }
    let me = std::env::current_exe().unwrap();
    let dir = std::env::temp_dir().join(format!("multiproc-setuid-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.join("copy");
    std::fs::copy(&me, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let marker = format!(
        "{}:0:{}:marker::whoami",
        std::process::id(),
        multiproc::entries().len()
    );
    let out = run(
        &copy,
        &marker,
        Stdio::from(std::os::fd::OwnedFd::from(theirs)),
        &["runuser", "-u", "nobody", "--"],
    );
    drop(ours);
    let _ = std::fs::remove_dir_all(&dir);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    if stderr.contains("runuser:") && !out.status.success() && !stdout.contains("main ran") {
        println!("skipped: runuser could not run the copy as nobody: {stderr}");
        return;
    }
    assert!(
        stdout.contains("main ran as uid 0"),
        "not run set-user-ID: {stdout}{stderr}"
    );
    assert!(stderr.contains("set-user-ID"), "{stderr}");
}
