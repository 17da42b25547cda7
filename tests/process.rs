//! Process, JoinHandle and spawn!: results, failures and introspection, across real processes.

mod common;

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use multiproc::{ErrorKind, Fd, Process, entry, process_entry, spawn};
use serde::{Deserialize, Serialize};

#[process_entry]
fn add(a: i32, b: i32) -> i32 {
    a + b
}

/// Named as the generated code's own argument tuple once was.
#[process_entry]
fn args(words: Vec<String>) -> usize {
    words.len()
}

#[test]
fn an_entry_may_be_named_like_the_generated_codes_locals() {
    let words = vec!["a".to_string(), "b".to_string()];
    assert_eq!(spawn!(args, words.clone()).unwrap().join().unwrap(), 2);
    assert_eq!(args(words), 2);
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Job {
    id: u64,
    words: Vec<String>,
    weight: Option<f64>,
}

#[process_entry]
fn summarize(job: Job, extra: String) -> (u64, usize, String) {
    (
        job.id,
        job.words.len(),
        format!("{}{}", job.words.join(" "), extra),
    )
}

#[process_entry]
fn nothing() {}

#[process_entry]
fn panics(message: String) -> u32 {
    panic!("{message}")
}

#[process_entry]
fn exits_with(code: i32) {
    std::process::exit(code)
}

#[process_entry]
fn aborts() {
    std::process::abort()
}

#[inline(never)]
fn recurse(depth: u64, pad: [u8; 4096]) -> u64 {
    let pad = std::hint::black_box(pad);
    if depth == u64::MAX {
        return pad[0] as u64;
    }
    recurse(depth + 1, pad) + pad[(depth % 4096) as usize] as u64
}

#[process_entry]
fn overflows_stack() -> u64 {
    // No guard page handler runs before `main`, so this is a plain SIGSEGV.
    recurse(0, [1; 4096])
}

/// Blocks until a byte arrives on `gate` (or it closes), then returns `value`.
#[process_entry]
fn wait_for_gate(gate: Fd, value: u32) -> u32 {
    let mut byte = [0u8; 1];
    let _ = std::fs::File::from(gate.into_owned_fd()).read(&mut byte);
    value
}

/// Signals `ready`, then blocks on `gate`.
#[process_entry]
fn ready_then_block(ready: Fd, gate: Fd) {
    let mut ready = std::fs::File::from(ready.into_owned_fd());
    let _ = ready.write_all(&[1]);
    drop(ready);
    let mut byte = [0u8; 1];
    let _ = std::fs::File::from(gate.into_owned_fd()).read(&mut byte);
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let (r, w) = std::io::pipe().expect("pipe");
    (r.into(), w.into())
}

fn read_byte(fd: &OwnedFd) -> Option<u8> {
    let mut file = std::fs::File::from(fd.try_clone().expect("dup"));
    let mut byte = [0u8; 1];
    match file.read(&mut byte) {
        Ok(1) => Some(byte[0]),
        _ => None,
    }
}

#[test]
fn spawn_returns_the_entrys_value() {
    assert_eq!(spawn!(add, 40, 2).unwrap().join().unwrap(), 42);
}

#[test]
fn structs_and_strings_round_trip() {
    let job = Job {
        id: 7,
        words: vec!["a".into(), "b".into()],
        weight: Some(0.5),
    };
    let out = spawn!(summarize, job, "!".to_string())
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(out, (7, 2, "a b!".to_string()));
}

#[test]
fn unit_entry_joins_ok() {
    spawn!(nothing).unwrap().join().unwrap();
}

#[test]
fn entry_stays_a_plain_function() {
    assert_eq!(add(1, 2), 3);
}

#[test]
fn builder_sets_name_and_default_names_count() {
    let named = Process::new(entry!(add), (1, 1))
        .name("adder-1")
        .start()
        .unwrap();
    assert_eq!(named.name(), "adder-1");
    let unnamed = Process::new(entry!(add), (1, 1)).start().unwrap();
    let n: u64 = unnamed
        .name()
        .strip_prefix("Process-")
        .and_then(|n| n.parse().ok())
        .expect("default name is Process-N");
    assert!(n >= 1);
    assert_eq!(named.join().unwrap(), 2);
    assert_eq!(unnamed.join().unwrap(), 2);
}

#[test]
fn join_reports_panic_with_message_and_location() {
    let child = spawn!(panics, "the sky fell".to_string()).unwrap();
    let pid = child.pid();
    let err = child.join().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Panicked);
    assert!(err.is_panicked());
    let report = err.panic().expect("panic report");
    assert_eq!(report.message, "the sky fell");
    let location = report.location.as_deref().expect("location");
    assert!(location.starts_with("tests/process.rs:"), "{location}");
    let text = err.to_string();
    assert!(text.contains("the sky fell"), "{text}");
    assert!(text.contains(&pid.to_string()), "{text}");
    assert!(text.contains("panics"), "entry named in: {text}");
    assert_eq!(err.exitcode(), Some(1));
}

#[test]
fn join_reports_exit_code() {
    let err = spawn!(exits_with, 3).unwrap().join().unwrap_err();
    assert!(err.is_exited(), "{err}");
    assert_eq!(err.exitcode(), Some(3));
    assert!(err.to_string().contains("exit code 3"), "{err}");
}

#[test]
fn join_reports_abort_as_sigabrt() {
    let err = spawn!(aborts).unwrap().join().unwrap_err();
    assert!(err.is_signaled(), "{err}");
    assert_eq!(err.exitcode(), Some(-6));
}

#[test]
fn join_reports_segfault_as_sigsegv() {
    let err = spawn!(overflows_stack).unwrap().join().unwrap_err();
    assert!(err.is_signaled(), "{err}");
    assert_eq!(err.exitcode(), Some(-11));
    assert!(err.to_string().contains("SIGSEGV"), "{err}");
}

#[test]
fn terminate_and_kill_report_the_signal() {
    for (how, sig) in [("terminate", 15), ("kill", 9)] {
        let (gate_r, _gate_w) = pipe();
        let mut child = spawn!(wait_for_gate, Fd::from(gate_r), 1).unwrap();
        assert!(child.is_alive());
        assert_eq!(child.exitcode(), None);
        if how == "terminate" {
            child.terminate().unwrap();
        } else {
            child.kill().unwrap();
        }
        let err = child.join_timeout(Duration::from_secs(10)).unwrap_err();
        assert!(err.is_signaled(), "{err}");
        assert_eq!(err.exitcode(), Some(-sig));
        // The handle stays usable and keeps the exit code.
        assert_eq!(child.exitcode(), Some(-sig));
        assert!(!child.is_alive());
        // Signalling an exited child is a no-op.
        child.terminate().unwrap();
        child.kill().unwrap();
    }
}

#[test]
fn join_timeout_returns_none_while_running_then_the_value() {
    let (gate_r, gate_w) = pipe();
    let mut child = spawn!(wait_for_gate, Fd::from(gate_r), 99).unwrap();
    let start = Instant::now();
    assert_eq!(
        child.join_timeout(Duration::from_millis(200)).unwrap(),
        None
    );
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(200), "{waited:?}");
    assert!(waited < Duration::from_millis(700), "{waited:?}");
    assert!(child.is_alive());
    assert_eq!(child.exitcode(), None);
    drop(gate_w);
    // Wakes as soon as the child ends, long before the bound.
    let start = Instant::now();
    assert_eq!(
        child.join_timeout(Duration::from_secs(30)).unwrap(),
        Some(99)
    );
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_eq!(child.exitcode(), Some(0));
    // The value was handed out: a later join says so, with a kind of its own.
    let again = child.join().unwrap_err();
    assert_eq!(again.kind(), ErrorKind::AlreadyTaken, "{again}");
}

#[test]
fn is_alive_turns_false_after_exit() {
    let (gate_r, gate_w) = pipe();
    let mut child = spawn!(wait_for_gate, Fd::from(gate_r), 5).unwrap();
    assert!(child.is_alive());
    drop(gate_w);
    assert_eq!(
        child.join_timeout(Duration::from_secs(30)).unwrap(),
        Some(5)
    );
    assert!(!child.is_alive());
}

#[process_entry]
fn fd_roundtrip(fd: Fd, text: String) -> usize {
    let mut file = std::fs::File::from(fd.into_owned_fd());
    file.write_all(text.as_bytes()).unwrap();
    text.len()
}

#[test]
fn fd_argument_arrives_as_a_working_descriptor() {
    let (r, w) = pipe();
    let n = spawn!(fd_roundtrip, Fd::from(w), "through the pipe".to_string())
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(n, 16);
    let mut text = String::new();
    std::fs::File::from(r).read_to_string(&mut text).unwrap();
    assert_eq!(text, "through the pipe");
}

#[process_entry]
fn many_fds(fds: Vec<Fd>) -> usize {
    for (i, fd) in fds.into_iter().enumerate() {
        let mut file = std::fs::File::from(fd.into_owned_fd());
        file.write_all(&[i as u8]).unwrap();
    }
    64
}

#[test]
fn sixty_four_fds_in_one_call() {
    let pipes: Vec<(OwnedFd, OwnedFd)> = (0..64).map(|_| pipe()).collect();
    let writers: Vec<Fd> = pipes
        .iter()
        .map(|(_, w)| Fd::from(w.try_clone().unwrap()))
        .collect();
    assert_eq!(spawn!(many_fds, writers).unwrap().join().unwrap(), 64);
    for (i, (r, _)) in pipes.iter().enumerate() {
        assert_eq!(read_byte(r), Some(i as u8));
    }
}

#[process_entry]
fn return_an_fd(text: String) -> Fd {
    let (r, w) = std::io::pipe().unwrap();
    let mut w = std::fs::File::from(OwnedFd::from(w));
    w.write_all(text.as_bytes()).unwrap();
    Fd::from(OwnedFd::from(r))
}

#[test]
fn fd_result_travels_back_to_the_parent() {
    let fd = spawn!(return_an_fd, "from child".to_string())
        .unwrap()
        .join()
        .unwrap();
    let mut text = String::new();
    fd.into_file().read_to_string(&mut text).unwrap();
    assert_eq!(text, "from child");
}

#[process_entry]
fn describe_self() -> (String, u32, bool, u32) {
    let me = multiproc::current_process();
    (
        me.name().to_string(),
        me.pid(),
        me.is_child(),
        multiproc::parent_pid(),
    )
}

#[test]
fn child_knows_its_name_pid_and_parent() {
    let child = Process::new(entry!(describe_self), ())
        .name("introspect")
        .start()
        .unwrap();
    let pid = child.pid();
    let (name, child_pid, is_child, parent) = child.join().unwrap();
    assert_eq!(name, "introspect");
    assert_eq!(child_pid, pid);
    assert!(is_child);
    assert_eq!(parent, std::process::id());
    let me = multiproc::current_process();
    assert_eq!(me.name(), "MainProcess");
    assert!(!me.is_child());
}

#[process_entry]
fn read_stdin() -> usize {
    let mut bytes = Vec::new();
    std::io::stdin().read_to_end(&mut bytes).unwrap();
    bytes.len()
}

#[test]
fn child_stdin_is_dev_null() {
    assert_eq!(spawn!(read_stdin).unwrap().join().unwrap(), 0);
}

#[process_entry]
fn spawn_grandchild(a: i32) -> (i32, u32) {
    let grandchild = spawn!(add, a, 1).unwrap();
    let pid = grandchild.pid();
    (grandchild.join().unwrap(), pid)
}

#[test]
fn a_child_can_spawn_grandchildren() {
    let (value, grandchild_pid) = spawn!(spawn_grandchild, 41).unwrap().join().unwrap();
    assert_eq!(value, 42);
    assert_ne!(grandchild_pid, std::process::id());
}

#[test]
fn active_children_lists_running_children_only() {
    let (gate_r, gate_w) = pipe();
    let mut child = Process::new(entry!(wait_for_gate), (Fd::from(gate_r), 0))
        .name("listed")
        .start()
        .unwrap();
    let listed = multiproc::active_children();
    assert!(
        listed
            .iter()
            .any(|c| c.pid() == child.pid() && c.name() == "listed"),
        "{listed:?}"
    );
    // The same, as fields.
    assert!(
        listed
            .iter()
            .any(|c| c.pid == child.pid() && c.name == "listed")
    );
    drop(gate_w);
    child.join_timeout(Duration::from_secs(30)).unwrap();
    let pid = child.pid();
    assert!(multiproc::active_children().iter().all(|c| c.pid() != pid));
}

#[test]
#[deny(unstable_name_collisions)]
fn entries_lists_registered_names() {
    let names = multiproc::entries();
    assert!(names.contains(&"process::add"), "{names:?}");
    assert!(names.contains(&"process::wait_for_gate"), "{names:?}");
    // An iterator too, sorted, which yields each name once.
    assert!(multiproc::entries().any(|name| name == "process::add"));
    let all: Vec<&str> = multiproc::entries().collect();
    assert_eq!(all.len(), names.len());
    assert!(all.windows(2).all(|w| w[0] < w[1]), "{all:?}");
    assert_eq!(Vec::from(multiproc::entries()), all);
    // As on the `Vec` it once was; not `ExactSizeIterator`'s unstable
    // `is_empty`, which would warn.
    assert!(!multiproc::entries().is_empty());
}

#[test]
fn cpu_count_is_positive() {
    assert!(multiproc::cpu_count() >= 1);
}

#[test]
fn fifty_concurrent_spawns_from_eight_threads() {
    let threads: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                let handles: Vec<_> = (0..7)
                    .filter(|i| t * 7 + i < 50)
                    .map(|i| (t * 7 + i, spawn!(add, t * 7 + i, 1000).unwrap()))
                    .collect();
                handles
                    .into_iter()
                    .map(|(i, h)| (i, h.join().unwrap()))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut results: Vec<(i32, i32)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    results.sort();
    assert_eq!(results.len(), 50);
    for (i, r) in results {
        assert_eq!(r, i + 1000);
    }
}

#[test]
fn handle_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<multiproc::JoinHandle<i32>>();
    let child = spawn!(add, 2, 3).unwrap();
    let value = std::thread::spawn(move || child.join().unwrap())
        .join()
        .unwrap();
    assert_eq!(value, 5);
}

#[test]
fn ready_signal_and_gate_synchronise_with_the_child() {
    let (ready_r, ready_w) = pipe();
    let (gate_r, gate_w) = pipe();
    let mut child = spawn!(ready_then_block, Fd::from(ready_w), Fd::from(gate_r)).unwrap();
    assert_eq!(read_byte(&ready_r), Some(1));
    assert!(child.is_alive());
    drop(gate_w);
    assert_eq!(
        child.join_timeout(Duration::from_secs(30)).unwrap(),
        Some(())
    );
}

#[derive(Debug)]
struct PanicsWhenDecoded;

impl Serialize for PanicsWhenDecoded {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_unit()
    }
}

impl<'de> Deserialize<'de> for PanicsWhenDecoded {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <()>::deserialize(d)?;
        panic!("refusing to be decoded")
    }
}

#[process_entry]
fn takes_fragile(_x: PanicsWhenDecoded) {}

#[test]
fn a_panic_while_decoding_arguments_is_reported_as_a_panic() {
    let err = spawn!(takes_fragile, PanicsWhenDecoded)
        .unwrap()
        .join()
        .unwrap_err();
    assert!(err.is_panicked(), "{err}");
    assert!(err.to_string().contains("refusing to be decoded"), "{err}");
}

#[process_entry]
fn big_vec(n: usize) -> Vec<u64> {
    (0..n as u64).collect()
}

#[test]
fn a_child_with_a_large_result_exits_without_being_joined() {
    let mut child = spawn!(big_vec, 2_000_000).unwrap();
    let pid = child.pid();
    // Its result does not fit in the socket, yet it exits at once.
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::PidfdFlags::empty(),
    )
    .unwrap();
    let mut fds = [rustix::event::PollFd::new(
        &pidfd,
        rustix::event::PollFlags::IN,
    )];
    let bound = rustix::event::Timespec {
        tv_sec: 30,
        tv_nsec: 0,
    };
    assert_eq!(rustix::event::poll(&mut fds, Some(&bound)).unwrap(), 1);
    let v = child.join_timeout(Duration::MAX).unwrap().unwrap();
    assert_eq!(v.len(), 2_000_000);
    assert_eq!(v[1_999_999], 1_999_999);
}

#[process_entry]
fn write_to_closed_pipe(w: Fd) -> String {
    let mut file = std::fs::File::from(w.into_owned_fd());
    match file.write_all(b"anyone there?") {
        Ok(()) => "written".to_string(),
        Err(e) => format!("{:?}", e.kind()),
    }
}

#[test]
fn sigpipe_is_ignored_in_the_child() {
    let (r, w) = pipe();
    drop(r);
    let outcome = spawn!(write_to_closed_pipe, Fd::from(w))
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(outcome, "BrokenPipe");
}

/// Holds `held` open until `never` is set, which it never is.
#[process_entry]
fn hold_for_ever(held: multiproc::Connection<u8>, never: multiproc::Event) {
    never.wait();
    drop(held);
}

#[test]
fn a_handle_dropped_by_a_panic_kills_its_child() {
    let (rx, tx) = multiproc::Pipe::<u8>::simplex().unwrap();
    let never = multiproc::Event::new().unwrap();
    let panicker = std::thread::spawn(move || {
        let _child = spawn!(hold_for_ever, tx, never.clone()).unwrap();
        panic!("the code that was to release the child fails");
    });
    assert!(panicker.join().is_err());
    // The child held the only sending end: it is gone once the child is.
    match rx.recv_timeout(common::BOUND) {
        Err(multiproc::RecvTimeoutError::Disconnected) => {}
        other => panic!("the child lives on: {other:?}"),
    }
}

#[process_entry]
fn name_two_children() -> (String, String) {
    let named = Process::new(entry!(noop_child), ())
        .name("named")
        .start()
        .unwrap();
    let unnamed = Process::new(entry!(noop_child), ()).start().unwrap();
    let names = (named.name().to_string(), unnamed.name().to_string());
    named.join().unwrap();
    unnamed.join().unwrap();
    names
}

#[process_entry]
fn noop_child() {}

#[test]
fn default_names_count_every_started_process_as_python_does() {
    // The named grandchild takes number 1, so the next default name ends
    // in 2 (Python's counter counts them all), after the child's own
    // number: the child's name, or its number when it was given a name.
    let child = spawn!(name_two_children).unwrap();
    let parent_name = child.name().to_string();
    let (named, unnamed) = child.join().unwrap();
    assert_eq!(named, "named");
    assert_eq!(unnamed, format!("{parent_name}:2"));
    let child = Process::new(entry!(name_two_children), ())
        .name("custom")
        .start()
        .unwrap();
    let (_, unnamed) = child.join().unwrap();
    let number = unnamed
        .strip_prefix("Process-")
        .and_then(|rest| rest.strip_suffix(":2"))
        .and_then(|n| n.parse::<u64>().ok());
    assert!(number.is_some(), "{unnamed}");
}

#[process_entry]
fn name_grandchild_of_grandchild() -> (String, String) {
    let child = spawn!(name_two_children).unwrap();
    let name = child.name().to_string();
    let (_, unnamed) = child.join().unwrap();
    (name, unnamed)
}

#[test]
fn default_names_of_descendants_say_where_they_are_in_the_tree() {
    // Python: the children of Process-3 are Process-3:1, Process-3:2, …
    // and theirs Process-3:1:1, …, so no two processes share a name.
    let child = spawn!(name_grandchild_of_grandchild).unwrap();
    let top = child.name().to_string();
    let (middle, bottom) = child.join().unwrap();
    assert_eq!(middle, format!("{top}:1"));
    assert_eq!(bottom, format!("{top}:1:2"));
}

#[process_entry]
fn exit_three() -> u8 {
    std::process::exit(3)
}

#[test]
fn an_error_reads_the_same_in_debug_as_in_display() {
    // `fn main() -> multiproc::Result<()>` prints the Debug form.
    let err = spawn!(exit_three).unwrap().join().unwrap_err();
    assert_eq!(format!("{err:?}"), err.to_string());
    assert!(
        err.to_string()
            .ends_with("exited without a result: exit code 3"),
        "{err}"
    );
    assert!(format!("{err:#?}").contains("kind: Exited"), "{err:#?}");
}

#[process_entry]
fn exit_zero_owing_nothing() {
    std::process::exit(0)
}

#[process_entry]
fn exit_zero_owing_a_value() -> u32 {
    std::process::exit(0)
}

#[test]
fn exit_zero_from_an_entry_that_owes_nothing_is_a_normal_end() {
    // Python: sys.exit(0) in a target is a normal end.
    spawn!(exit_zero_owing_nothing).unwrap().join().unwrap();
    // An entry that owes a value still fails without it.
    let err = spawn!(exit_zero_owing_a_value).unwrap().join().unwrap_err();
    assert!(err.is_exited() && err.exitcode() == Some(0), "{err}");
}

#[process_entry]
fn my_args() -> Vec<String> {
    std::env::args().collect()
}

#[test]
fn a_child_sees_the_programs_arguments() {
    let theirs = spawn!(my_args).unwrap().join().unwrap();
    assert_eq!(theirs, std::env::args().collect::<Vec<_>>());
}

/// The child's whole environment, sorted.
#[process_entry]
fn environment() -> Vec<(String, String)> {
    let mut vars: Vec<_> = std::env::vars().collect();
    vars.sort();
    vars
}

#[process_entry]
fn env_var(key: String) -> Option<String> {
    std::env::var(key).ok()
}

#[test]
fn env_sets_and_overrides_variables_under_both_start_methods() {
    let path = std::env::var("PATH").expect("the tests run with a PATH");
    for method in common::start_methods() {
        let child = Process::new(entry!(env_var), ("MULTIPROC_TEST_SET".to_string(),))
            .env("MULTIPROC_TEST_SET", "first")
            .env("MULTIPROC_TEST_SET", "second")
            .start_method(method)
            .start()
            .unwrap();
        assert_eq!(
            child.join().unwrap().as_deref(),
            Some("second"),
            "{method:?}"
        );
        let child = Process::new(entry!(env_var), ("PATH".to_string(),))
            .env("PATH", "/nowhere")
            .start_method(method)
            .start()
            .unwrap();
        assert_eq!(
            child.join().unwrap().as_deref(),
            Some("/nowhere"),
            "{method:?}"
        );
        // The parent's own is untouched, and the next child has it again.
        assert_eq!(std::env::var("PATH").unwrap(), path);
        let child = Process::new(entry!(env_var), ("PATH".to_string(),))
            .start_method(method)
            .start()
            .unwrap();
        assert_eq!(child.join().unwrap(), Some(path.clone()), "{method:?}");
    }
}

#[test]
fn env_remove_hides_a_parent_variable_under_both_start_methods() {
    assert!(std::env::var_os("PATH").is_some());
    for method in common::start_methods() {
        let child = Process::new(entry!(env_var), ("PATH".to_string(),))
            .env("PATH", "/set/then/removed")
            .env_remove("PATH")
            .start_method(method)
            .start()
            .unwrap();
        assert_eq!(child.join().unwrap(), None, "{method:?}");
    }
}

#[test]
fn env_clear_leaves_only_what_was_set_after_it_under_both_start_methods() {
    for method in common::start_methods() {
        let child = Process::new(entry!(environment), ())
            .env("MULTIPROC_TEST_BEFORE", "cleared")
            .env_clear()
            .env("MULTIPROC_TEST_AFTER", "kept")
            .start_method(method)
            .start()
            .unwrap();
        // The child booted (multiproc's own marker still reached it) and
        // its entry sees nothing else.
        assert_eq!(
            child.join().unwrap(),
            [("MULTIPROC_TEST_AFTER".to_string(), "kept".to_string())],
            "{method:?}"
        );
    }
}

#[process_entry]
fn panics_under_its_own_hook(message: String) -> u32 {
    // A program may install its own hook (a logging or error-report
    // crate does, on its first call), which replaces multiproc's.
    std::panic::set_hook(Box::new(|_| {}));
    panic!("{message}")
}

#[process_entry]
fn resumes_an_unwind(message: String) -> u32 {
    // No hook runs for a resumed unwind.
    std::panic::resume_unwind(Box::new(message))
}

#[process_entry]
fn recovers_then_resumes(message: String) -> u32 {
    // A panic caught and recovered from first: not the one that ends it.
    let caught = std::panic::catch_unwind(|| panic!("recovered from"));
    assert!(caught.is_err());
    std::panic::resume_unwind(Box::new(message))
}

/// The message of the panic that ended `entry`'s child, run with `message`.
fn panic_message<E>(entry: E, message: &str, method: multiproc::StartMethod) -> String
where
    E: multiproc::Entry<Args = (String,), Output = u32>,
{
    let child = Process::new(entry, (message.to_string(),))
        .start_method(method)
        .start()
        .unwrap();
    let err = child.join().unwrap_err();
    assert!(err.is_panicked(), "{method:?}: {err}");
    err.panic().expect("panic report").message.clone()
}

#[test]
fn a_panic_keeps_its_message_when_no_multiproc_hook_saw_it() {
    for method in common::start_methods() {
        let hooked = panic_message(entry!(panics_under_its_own_hook), "hooked 7", method);
        assert_eq!(hooked, "hooked 7", "{method:?}");
        let resumed = panic_message(entry!(resumes_an_unwind), "resumed 8", method);
        assert_eq!(resumed, "resumed 8", "{method:?}");
        let last = panic_message(entry!(recovers_then_resumes), "resumed 9", method);
        assert_eq!(last, "resumed 9", "{method:?}");
    }
}

#[process_entry]
fn never_returns(code: i32) -> ! {
    std::process::exit(code)
}

#[test]
fn an_entry_that_never_returns_joins_as_its_exit_says() {
    // `exit(0)` ends it as returning `()` would.
    let () = spawn!(never_returns, 0).unwrap().join().unwrap();
    let err = spawn!(never_returns, 5).unwrap().join().unwrap_err();
    assert!(err.is_exited(), "{err}");
    assert_eq!(err.exitcode(), Some(5));
}

/// Deprecation warnings denied: an entry marked `#[deprecated]` must not
/// warn where it is defined (only where it is called).
#[deny(deprecated)]
mod deprecated_entries {
    #[multiproc::process_entry]
    #[deprecated(note = "kept for old callers")]
    pub fn old_add(a: u32, b: u32) -> u32 {
        a + b
    }
}

#[test]
fn a_deprecated_entry_compiles_where_deprecation_is_denied_and_runs() {
    assert_eq!(
        spawn!(deprecated_entries::old_add, 2, 3)
            .unwrap()
            .join()
            .unwrap(),
        5
    );
}

/// Clippy's pedantic and nursery lints denied (checked by the project's
/// `cargo clippy --all-targets -- -D warnings`): the code generated for an
/// entry must not trip them where the user's own code does not.
#[deny(clippy::pedantic, clippy::nursery)]
mod strict_lints {
    #[multiproc::process_entry]
    #[must_use]
    pub fn pid_plus(x: u32) -> u32 {
        x.wrapping_add(std::process::id())
    }

    #[multiproc::process_entry]
    pub fn touch() {
        let _ = std::process::id();
    }

    #[multiproc::process_entry]
    pub fn end(code: i32) -> ! {
        std::process::exit(code)
    }

    #[multiproc::process_entry]
    /// Owned arguments it does not consume: clippy's
    /// `needless_pass_by_value` would ask for references, which an entry
    /// cannot take.
    pub fn many(
        text: String,
        bytes: Vec<u8>,
        (small, wide): (u8, u16),
        mut maybe: Option<u64>,
    ) -> usize {
        maybe.take();
        text.len() + bytes.len() + usize::from(small) + usize::from(wide)
    }
}

#[test]
fn an_entry_under_strict_lints_runs() {
    let child = spawn!(strict_lints::pid_plus, 1).unwrap();
    let pid = child.pid();
    assert_eq!(child.join().unwrap(), pid.wrapping_add(1));
    let child = spawn!(
        strict_lints::many,
        "ab".to_string(),
        vec![1, 2, 3],
        (4, 5),
        Some(6)
    )
    .unwrap();
    assert_eq!(child.join().unwrap(), 14);
    spawn!(strict_lints::touch).unwrap().join().unwrap();
    spawn!(strict_lints::end, 0).unwrap().join().unwrap();
}

/// How [`fallible`] fails, or that it does not.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
enum Outcome {
    Fine,
    /// A grandchild that exits with code 3, joined with `?`.
    ChildExits,
    /// A file that is not there, opened with `?`.
    NoFile,
}

/// An entry that uses `?` on multiproc's errors, and returns them.
#[process_entry]
fn fallible(outcome: Outcome) -> multiproc::Result<u32> {
    match outcome {
        Outcome::Fine => Ok(7),
        Outcome::ChildExits => {
            spawn!(exits_with, 3)?.join()?;
            Ok(0)
        }
        Outcome::NoFile => {
            std::fs::File::open("/nonexistent/multiproc-test")?;
            Ok(0)
        }
    }
}

#[test]
fn an_entry_returns_a_multiproc_result_under_both_start_methods() {
    for method in common::start_methods() {
        let start = |outcome| {
            Process::new(entry!(fallible), (outcome,))
                .start_method(method)
                .start()
                .unwrap()
                .join()
                .unwrap()
        };
        assert_eq!(start(Outcome::Fine).unwrap(), 7, "{method:?}");

        let err = start(Outcome::ChildExits).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Exited, "{method:?}");
        assert!(err.is_exited() && !err.is_io(), "{method:?}");
        assert_eq!(err.exitcode(), Some(3), "{method:?}");
        let shown = err.to_string();
        assert!(shown.contains("exited without a result"), "{shown}");
        assert!(
            shown.contains("exits_with"),
            "names the grandchild's entry: {shown}"
        );

        let err = start(Outcome::NoFile).unwrap_err();
        assert!(err.is_io(), "{method:?}: {err:?}");
        assert_eq!(err.exitcode(), None);
        let local =
            multiproc::Error::from(std::fs::File::open("/nonexistent/multiproc-test").unwrap_err());
        // The whole chain reads as it did in the child.
        assert_eq!(format!("{err:#}"), format!("{local:#}"), "{method:?}");
        assert_eq!(format!("{err:?}"), format!("{local:?}"), "{method:?}");
        let cause = std::error::Error::source(&err).expect("the OS error travels");
        let io = cause
            .downcast_ref::<std::io::Error>()
            .expect("an io::Error again");
        assert_eq!(io.raw_os_error(), Some(libc::ENOENT), "{method:?}");
        assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
    }
}

/// The size of [`large_inline_result`]'s result: far more than a socket
/// buffer holds, so its writer blocks until the reader takes some.
const LARGE_INLINE: usize = 4 << 20;

/// Returns [`LARGE_INLINE`] bytes written inline on the control socket: it
/// takes away its own descriptors (soft `RLIMIT_NOFILE` 0), so the result
/// cannot go in a memfd, and then writes it in pieces as the parent reads.
#[process_entry]
fn large_inline_result() -> Vec<u8> {
    let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum;
    rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(0),
            maximum: hard,
        },
    )
    .expect("lowering the descriptor limit");
    (0..LARGE_INLINE).map(|i| (i % 251) as u8).collect()
}

/// The system call `pid`'s main thread is blocked in (`None`: running, or
/// not in one).
fn blocked_in_syscall(pid: u32) -> Option<i64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// `pid`'s state letter in `/proc/<pid>/stat`.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Waits, a bounded time, for `pid` to reach `what`.
fn wait_until(pid: u32, what: &str, mut reached: impl FnMut() -> bool) {
    let bound = Instant::now() + Duration::from_secs(60);
    while !reached() {
        assert!(Instant::now() < bound, "child {pid} never {what}");
        std::thread::yield_now();
    }
}

/// Starts `entry`, which writes a large result inline, and waits until it
/// is blocked in a send: the socket buffer is full of the first part of the
/// result frame (nothing else goes that way), and the rest waits. Returns
/// the handle, the pid and the pid to signal.
fn blocked_mid_result<E>(
    entry: E,
    method: multiproc::StartMethod,
) -> (multiproc::JoinHandle<Vec<u8>>, u32, rustix::process::Pid)
where
    E: multiproc::Entry<Args = (), Output = Vec<u8>>,
{
    let child = Process::new(entry, ())
        .start_method(method)
        .start()
        .unwrap();
    let pid = child.pid();
    let target = rustix::process::Pid::from_raw(pid as i32).expect("a pid");
    wait_until(
        pid,
        "blocked writing its result",
        || matches!(blocked_in_syscall(pid), Some(n) if n == libc::SYS_sendto || n == libc::SYS_sendmsg),
    );
    (child, pid, target)
}

#[test]
fn join_timeout_keeps_its_deadline_when_the_child_stops_mid_result() {
    for method in common::start_methods() {
        let (child, pid, target) = blocked_mid_result(entry!(large_inline_result), method);
        rustix::process::kill_process(target, rustix::process::Signal::STOP).unwrap();
        wait_until(pid, "stopped", || process_state(pid) == Some('T'));

        // A bounded join must come back by its deadline, twice (the second
        // with part of a frame already taken), leaving the rest to come.
        let (tx, rx) = std::sync::mpsc::channel();
        let joiner = std::thread::spawn(move || {
            let mut child = child;
            for _ in 0..2 {
                let begun = Instant::now();
                let got = child.join_timeout(Duration::from_millis(100));
                tx.send((got.map(|v| v.map(|v| v.len())), begun.elapsed()))
                    .unwrap();
            }
            child
        });
        for _ in 0..2 {
            match rx.recv_timeout(Duration::from_secs(20)) {
                Ok((got, took)) => {
                    assert_eq!(got.unwrap(), None, "{method:?}");
                    assert!(took < Duration::from_secs(10), "{method:?}: took {took:?}");
                }
                Err(_) => {
                    let _ = rustix::process::kill_process(target, rustix::process::Signal::KILL);
                    let _ = joiner.join();
                    panic!("{method:?}: join_timeout(100 ms) blocked past its deadline");
                }
            }
        }
        let child = joiner.join().unwrap();
        rustix::process::kill_process(target, rustix::process::Signal::CONT).unwrap();
        let value = child.join().unwrap();
        assert_eq!(value.len(), LARGE_INLINE, "{method:?}");
        assert!(
            value.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8),
            "{method:?}: the result came whole and in order"
        );
    }
}

/// [`large_inline_result`], from a process that first forks a copy of
/// itself that holds every descriptor (its control socket among them) for a
/// minute, as a C library might fork behind its back.
#[process_entry]
fn large_inline_result_beside_a_fork() -> Vec<u8> {
    multiproc::__private::fork_lingering_child(Duration::from_secs(60))
        .expect("forking a lingering copy");
    large_inline_result()
}

#[test]
fn join_sees_a_child_killed_mid_result_while_a_fork_keeps_its_socket() {
    for method in common::start_methods() {
        // Part of the result frame is in the socket; the rest will never come.
        let (child, _, target) =
            blocked_mid_result(entry!(large_inline_result_beside_a_fork), method);
        rustix::process::kill_process(target, rustix::process::Signal::KILL).unwrap();

        // The fork keeps the socket open for a minute, so no end of stream
        // comes before then: `join` must see the child's death instead.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.join().map(|v| v.len()));
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Err(err)) => {
                assert!(err.is_signaled(), "{method:?}: {err}");
                assert_eq!(err.exitcode(), Some(-libc::SIGKILL), "{method:?}: {err}");
            }
            Ok(Ok(len)) => panic!("{method:?}: a killed child returned {len} bytes"),
            Err(_) => panic!("{method:?}: join blocked on the unfinished result frame"),
        }
    }
}

/// Forks a copy that holds every descriptor (the control socket among
/// them) for a minute, then exits with code 3 before any result.
#[process_entry]
fn fork_then_exit_3() -> u32 {
    multiproc::__private::fork_lingering_child(Duration::from_secs(60))
        .expect("forking a lingering copy");
    std::process::exit(3)
}

/// A child that exits while a copy it forked keeps its socket open is
/// reported by `join` at once: with a pidfd, and without one (CI runs this
/// file with `MULTIPROC_NO_PIDFD=1`), when it asks whether the child runs.
#[test]
fn join_sees_a_child_exit_while_a_fork_keeps_its_socket() {
    for method in common::start_methods() {
        let child = Process::new(entry!(fork_then_exit_3), ())
            .start_method(method)
            .start()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.join());
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Err(err)) => {
                assert!(err.is_exited(), "{method:?}: {err}");
                assert_eq!(err.exitcode(), Some(3), "{method:?}: {err}");
            }
            Ok(Ok(v)) => panic!("{method:?}: an exited child returned {v}"),
            Err(_) => panic!("{method:?}: join waited on the fork's open socket"),
        }
    }
}

/// An entry that spells out the Rust ABI, which is a plain Rust fn.
#[process_entry]
extern "Rust" fn spelled_rust_abi(a: u32, b: u32) -> u32 {
    a * b
}

#[test]
fn an_entry_with_an_explicit_rust_abi_runs() {
    for method in common::start_methods() {
        let child = Process::new(entry!(spelled_rust_abi), (6, 7))
            .start_method(method)
            .start()
            .unwrap();
        assert_eq!(child.join().unwrap(), 42, "{method:?}");
    }
    assert_eq!(spawn!(spelled_rust_abi, 2, 3).unwrap().join().unwrap(), 6);
}

/// Leaves a thread running for ever, unjoined, and returns.
#[process_entry]
fn return_leaving_a_thread() -> u32 {
    std::thread::spawn(|| {
        loop {
            std::thread::park();
        }
    });
    7
}

#[test]
fn threads_an_entry_left_running_end_with_it() {
    // As when `main` returns: the child exits, its thread with it.
    let mut child = spawn!(return_leaving_a_thread).unwrap();
    assert_eq!(child.join_timeout(common::BOUND).unwrap(), Some(7));
    assert_eq!(child.exitcode(), Some(0));
}

/// A value whose `Serialize` always fails.
struct FailsToEncode;

impl Serialize for FailsToEncode {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("refusing to be encoded"))
    }
}

impl<'de> Deserialize<'de> for FailsToEncode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <()>::deserialize(d).map(|()| FailsToEncode)
    }
}

#[process_entry]
fn takes_unencodable(_x: FailsToEncode) {}

/// Starts `takes_unencodable`: the error, and how many children this
/// process has then (in the kernel's eyes, from every thread).
#[process_entry]
fn start_with_an_unencodable_argument() -> (String, usize) {
    let err = Process::new(entry!(takes_unencodable), (FailsToEncode,))
        .start()
        .unwrap_err();
    let mut children = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let list = std::fs::read_to_string(task.unwrap().path().join("children")).unwrap();
        children += list.split_whitespace().count();
    }
    (format!("{:?}: {err}", err.kind()), children)
}

#[test]
fn an_argument_that_cannot_be_encoded_fails_start_and_starts_nothing() {
    // In a child of its own, so that no other test's children are counted.
    let (err, children) = spawn!(start_with_an_unencodable_argument)
        .unwrap()
        .join()
        .unwrap();
    assert!(err.starts_with("Encode: "), "{err}");
    // What the failing `Serialize` said, as it said it (postcard's error
    // does not keep serde's custom message).
    let reason = if cfg!(feature = "postcard") {
        "could not encode: Serde Serialization Error"
    } else {
        "could not encode: refusing to be encoded"
    };
    assert!(err.ends_with(reason), "{err}");
    assert_eq!(children, 0);
}
