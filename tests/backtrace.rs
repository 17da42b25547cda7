//! A child's panic: the child prints it once on stderr, naming its process
//! and entry, with a backtrace trimmed of the panic machinery when
//! `RUST_BACKTRACE` is set; the parent's error carries the same report, and
//! its `Display` stays one line.

mod common;

use std::process::Command;

use multiproc::{process_entry, spawn};

#[process_entry]
fn deep_panic() -> u8 {
    panic!("with a backtrace")
}
/// The line of the `panic!` just above.
const PANIC_LINE: u32 = line!() - 3;

#[process_entry]
fn thread_panics() -> bool {
    let helper = std::thread::Builder::new().name("helper".into());
    let thread = helper.spawn(|| panic!("in a helper thread")).unwrap();
    thread.join().is_err()
}
/// The line of the `panic!` above.
const THREAD_PANIC_LINE: u32 = line!() - 4;

const INNER: &str = "MULTIPROC_BACKTRACE_INNER";

#[test]
#[ignore = "run by backtrace_travels_when_rust_backtrace_is_set"]
fn inner_reports_backtrace() {
    if !common::run_by_outer_test(INNER, "backtrace_travels_when_rust_backtrace_is_set") {
        return;
    }
    let child = spawn!(deep_panic).unwrap();
    expect_panic_line(&child);
    let err = child.join().unwrap_err();
    let report = err.panic().expect("panic report");
    let backtrace = report.backtrace.as_deref().expect("backtrace captured");
    assert!(backtrace.contains("deep_panic"), "{backtrace}");
    // Trimmed: it starts where std's own panic output starts, and ends at
    // the entry, without the hook, the capture or multiproc's runner.
    assert!(
        backtrace
            .trim_start()
            .starts_with("0: __rustc::rust_begin_unwind")
            || backtrace.trim_start().starts_with("0: rust_begin_unwind"),
        "{backtrace}"
    );
    for internal in [
        "from_hook",
        "panic_hook",
        "std::panicking",
        "std::backtrace",
        "catch_unwind",
        "run_entry",
        "spawn::child",
    ] {
        assert!(!backtrace.contains(internal), "{internal}: {backtrace}");
    }
    // The parent's error says it once, on one line.
    assert!(!err.to_string().contains('\n'), "{err}");
}

#[test]
#[ignore = "run by a_thread_of_an_entry_names_itself_and_its_process"]
fn inner_thread_panic() {
    if !common::run_by_outer_test(INNER, "a_thread_of_an_entry_names_itself_and_its_process") {
        return;
    }
    let child = spawn!(thread_panics).unwrap();
    println!(
        "EXPECT:thread 'helper' of process '{}' (pid {}) entry `backtrace::thread_panics` panicked at tests/backtrace.rs:{THREAD_PANIC_LINE}:",
        child.name(),
        child.pid()
    );
    assert!(child.join().unwrap(), "the helper thread did not panic");
}

/// Prints what the child's panic line must say, for the outer test to find
/// on the child's stderr.
fn expect_panic_line(child: &multiproc::JoinHandle<u8>) {
    println!(
        "EXPECT:process '{}' (pid {}) entry `backtrace::deep_panic` panicked at tests/backtrace.rs:{PANIC_LINE}:5:",
        child.name(),
        child.pid()
    );
}

#[test]
#[ignore = "run by backtrace_travels_when_rust_backtrace_is_set"]
fn inner_reports_no_backtrace() {
    if !common::run_by_outer_test(INNER, "backtrace_travels_when_rust_backtrace_is_set") {
        return;
    }
    let child = spawn!(deep_panic).unwrap();
    expect_panic_line(&child);
    let err = child.join().unwrap_err();
    assert_eq!(err.panic().expect("panic report").backtrace, None);
}

/// Runs `test` in a fresh copy of this binary with `RUST_BACKTRACE` set
/// to `backtrace`, and returns what its child printed on stderr after the
/// line the test expects.
fn run_inner(test: &str, backtrace: &str, message: &str) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            test,
            "--ignored",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(INNER, "1")
        .env("RUST_BACKTRACE", backtrace)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "{stdout}");
    let expect = stdout
        .lines()
        .find_map(|l| l.split_once("EXPECT:").map(|(_, line)| line))
        .expect("the expected line");
    // Once, and not as std's `thread '<unnamed>'` line.
    assert_eq!(stderr.matches("panicked at").count(), 1, "{stderr}");
    assert!(!stderr.contains("<unnamed>"), "{stderr}");
    let (_, after) = stderr
        .split_once(expect)
        .unwrap_or_else(|| panic!("no `{expect}` in:\n{stderr}"));
    // The rest of the line (a column the expectation may leave out), then
    // the message.
    let after = after.split_once('\n').map_or("", |(_, rest)| rest);
    assert!(after.starts_with(&format!("{message}\n")), "{stderr}");
    after.to_string()
}

#[test]
fn backtrace_travels_when_rust_backtrace_is_set() {
    let printed = run_inner("inner_reports_backtrace", "1", "with a backtrace");
    // One trimmed copy, in the child's own report.
    assert_eq!(printed.matches("stack backtrace:").count(), 1, "{printed}");
    assert!(printed.contains("deep_panic"), "{printed}");
    for internal in [
        "from_hook",
        "panic_hook",
        "std::panicking",
        "std::backtrace",
    ] {
        assert!(!printed.contains(internal), "{internal}: {printed}");
    }
}

#[test]
fn no_backtrace_without_rust_backtrace() {
    let printed = run_inner("inner_reports_no_backtrace", "0", "with a backtrace");
    assert!(!printed.contains("stack backtrace"), "{printed}");
    assert!(printed.contains("RUST_BACKTRACE=1"), "{printed}");
}

#[test]
fn a_thread_of_an_entry_names_itself_and_its_process() {
    let printed = run_inner("inner_thread_panic", "0", "in a helper thread");
    assert!(!printed.contains("stack backtrace"), "{printed}");
}

#[test]
#[ignore = "run by a_pool_task_panic_names_the_task"]
fn inner_pool_task_panic() {
    if !common::run_by_outer_test(INNER, "a_pool_task_panic_names_the_task") {
        return;
    }
    let pool = multiproc::Pool::new(1).unwrap();
    println!("EXPECT:task `backtrace::deep_panic` panicked at tests/backtrace.rs:{PANIC_LINE}:5:");
    let err = pool.apply(multiproc::entry!(deep_panic), ()).unwrap_err();
    assert!(err.is_panicked(), "{err}");
}

#[test]
fn a_pool_task_panic_names_the_task() {
    // Not the worker's own entry (`pool_worker`): the task that panicked.
    let printed = run_inner("inner_pool_task_panic", "0", "with a backtrace");
    assert!(!printed.contains("pool_worker"), "{printed}");
}
