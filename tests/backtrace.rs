//! A child's panic backtrace travels to the parent when `RUST_BACKTRACE` is set.

mod common;

use std::process::Command;

use multiproc::{process_entry, spawn};

#[process_entry]
fn deep_panic() -> u8 {
    panic!("with a backtrace")
}

const INNER: &str = "MULTIPROC_BACKTRACE_INNER";

#[test]
#[ignore = "run by backtrace_travels_when_rust_backtrace_is_set"]
fn inner_reports_backtrace() {
    if !common::run_by_outer_test(INNER, "backtrace_travels_when_rust_backtrace_is_set") {
        return;
    }
    let err = spawn!(deep_panic).unwrap().join().unwrap_err();
    let report = err.panic().expect("panic report");
    let backtrace = report.backtrace.as_deref().expect("backtrace captured");
    assert!(backtrace.contains("deep_panic"), "{backtrace}");
    assert!(err.to_string().contains("child backtrace"), "{err}");
}

#[test]
#[ignore = "run by backtrace_travels_when_rust_backtrace_is_set"]
fn inner_reports_no_backtrace() {
    if !common::run_by_outer_test(INNER, "backtrace_travels_when_rust_backtrace_is_set") {
        return;
    }
    let err = spawn!(deep_panic).unwrap().join().unwrap_err();
    assert_eq!(err.panic().expect("panic report").backtrace, None);
}

fn run_inner(test: &str, backtrace: &str) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--ignored", "--test-threads=1"])
        .env(INNER, "1")
        .env("RUST_BACKTRACE", backtrace)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));
}

#[test]
fn backtrace_travels_when_rust_backtrace_is_set() {
    run_inner("inner_reports_backtrace", "1");
}

#[test]
fn no_backtrace_without_rust_backtrace() {
    run_inner("inner_reports_no_backtrace", "0");
}
