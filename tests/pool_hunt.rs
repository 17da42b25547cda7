//! Pool: the paths `tests/pool.rs` leaves out, hunting for hangs, panics,
//! lost results and leaks. Each scenario runs on a thread of its own under
//! a bound, so a hang fails the test rather than wedging the run, and under
//! each start method this system has.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use multiproc::{Event, Pool, StartMethod, Value, entry, process_entry};

/// A bound on a scenario that must not hang: generous, since it only turns
/// a hang into a failure.
const NO_HANG: Duration = Duration::from_secs(90);

/// Runs `f` on a thread of its own and fails the test if it has not
/// returned within `bound` (the thread is then left behind: that is the
/// hang). A panic in `f` fails the test with its message.
fn bounded<T: Send + 'static>(
    what: &str,
    bound: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(bound) {
        Ok(value) => {
            let _ = thread.join();
            value
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match thread.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the scenario returned without a value"),
        },
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: hung (not done within {bound:?})")
        }
    }
}

/// Taken by every test: they count this process's children, descriptors
/// and threads, so they run one at a time even when the harness runs them
/// on several threads.
static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn alone() -> std::sync::MutexGuard<'static, ()> {
    ALONE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `scenario` once per start method, each bounded.
fn each_method(what: &'static str, scenario: fn(StartMethod)) {
    let _alone = alone();
    for method in common::start_methods() {
        bounded(&format!("{what} under {method:?}"), NO_HANG, move || {
            scenario(method)
        });
    }
}

fn pool_of(processes: usize, method: StartMethod) -> Pool {
    Pool::builder()
        .processes(processes)
        .start_method(method)
        .build()
        .unwrap()
}

#[process_entry]
fn square(x: u64) -> u64 {
    x * x
}

#[process_entry]
fn slow_square(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(5));
    x * x
}

#[process_entry]
fn pid_of(_x: u64) -> u32 {
    std::process::id()
}

#[process_entry]
fn wait_for(event: Event) -> u32 {
    event.wait();
    7
}

fn squares(range: std::ops::Range<u64>) -> Vec<u64> {
    range.map(|x| x * x).collect()
}

// ---------------------------------------------------------------------
// imap dropped half-way; pool dropped under live results.

fn imap_dropped_half_way(method: StartMethod) {
    let pool = pool_of(2, method);
    for ordered in [true, false] {
        let pulled = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&pulled);
        let input = (0..100_000u64).inspect(move |_| {
            counter.fetch_add(1, Ordering::Relaxed);
        });
        let mut it = if ordered {
            pool.imap(entry!(slow_square), input).unwrap()
        } else {
            pool.imap_unordered(entry!(slow_square), input).unwrap()
        };
        for _ in 0..10 {
            it.next().unwrap().unwrap();
        }
        drop(it);
        let after_drop = pulled.load(Ordering::Relaxed);
        assert!(after_drop < 1000, "took {after_drop} items for 10 results");
        // The same pool serves at once (cancelled chunks are not run first
        // for 5 ms each: 100 000 of them would take minutes).
        let got = pool.map(entry!(square), 0..300u64).unwrap();
        assert_eq!(got, squares(0..300));
        let got: Vec<u64> = pool
            .imap(entry!(square), 0..50u64)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(got, squares(0..50));
        assert_eq!(
            pulled.load(Ordering::Relaxed),
            after_drop,
            "input taken after drop"
        );
    }
    // And nothing the dropped iterators left keeps `join` waiting.
    pool.close();
    pool.join().unwrap();
}

#[test]
fn an_imap_dropped_half_way_leaves_the_pool_serving() {
    each_method("imap dropped half-way", imap_dropped_half_way);
}

fn pool_dropped_under_live_results(method: StartMethod) {
    let pool = pool_of(2, method);
    let never = Event::new().unwrap();
    let stuck = pool
        .apply_async(entry!(wait_for), (never.clone(),))
        .unwrap();
    let done = pool.apply_async(entry!(square), (9,)).unwrap();
    assert!(done.wait_timeout(common::BOUND));
    let mut ordered = pool.imap(entry!(slow_square), 0..200u64).unwrap();
    let unordered = pool.imap_unordered(entry!(slow_square), 0..200u64).unwrap();
    let endless = pool.imap(entry!(square), 0u64..).unwrap();
    assert_eq!(ordered.next().unwrap().unwrap(), 0);
    let mapped = pool
        .map_async(entry!(wait_for), vec![never.clone(); 4])
        .unwrap();
    drop(pool);
    // A result in before the drop is still there.
    assert_eq!(done.get().unwrap(), 81);
    let err = stuck.get().unwrap_err();
    assert!(err.is_disconnected(), "{err}");
    let err = mapped.get().unwrap_err();
    assert!(err.is_disconnected(), "{err}");
    // Every item of the finite ones yields a result (correct, or an error
    // saying the pool ended), then the iterator ends.
    for (name, it, first) in [("imap", ordered, 1u64), ("imap_unordered", unordered, 0)] {
        let results: Vec<_> = it.collect();
        assert_eq!(results.len() as u64, 200 - first, "{name}");
        let mut failed = 0;
        for r in &results {
            match r {
                Ok(v) => assert!(
                    v.isqrt() * v.isqrt() == *v && v.isqrt() < 200,
                    "{name}: {v}"
                ),
                Err(e) => {
                    assert!(e.is_disconnected(), "{name}: {e}");
                    failed += 1;
                }
            }
        }
        assert!(
            failed > 0,
            "{name}: nothing failed, so the drop did not end it"
        );
    }
    // The endless one keeps yielding (errors), never waits.
    let tail: Vec<_> = endless.take(3000).collect();
    assert_eq!(tail.len(), 3000);
    assert!(tail.last().unwrap().is_err());
}

#[test]
fn results_outliving_their_pool_fail_rather_than_wait() {
    each_method(
        "pool dropped under live results",
        pool_dropped_under_live_results,
    );
}

// ---------------------------------------------------------------------
// terminate / close+join from another thread.

/// `slow_square(x)`, counting the tasks that ran in `ran`.
#[process_entry]
fn slow_square_counted(x: u64, ran: Value<u64>) -> u64 {
    *ran.lock().unwrap() += 1;
    slow_square(x)
}

fn terminate_during_map(method: StartMethod) {
    let pool = Arc::new(pool_of(2, method));
    let ran = Value::new(0u64).unwrap();
    let p = Arc::clone(&pool);
    let items: Vec<_> = (0..2000u64).map(|x| (x, ran.clone())).collect();
    let mapper =
        std::thread::spawn(move || p.starmap_chunked(entry!(slow_square_counted), items, 1));
    // Terminated while the map runs (2000 tasks of 5 ms on 2 workers).
    common::eventually("the map runs", || ran.load() > 0);
    pool.terminate();
    let err = mapper.join().unwrap().unwrap_err();
    assert!(err.is_disconnected(), "{err}");
    assert!(err.to_string().contains("terminated"), "{err}");
    // Terminated twice, then joined: neither waits nor fails.
    pool.terminate();
    pool.join().unwrap();
    let err = pool.apply_async(entry!(square), (2,)).unwrap_err();
    assert!(err.is_disconnected(), "{err}");
    assert!(multiproc::active_children().is_empty());
}

#[test]
fn terminate_from_another_thread_fails_a_running_map() {
    each_method("terminate during map", terminate_during_map);
}

fn close_join_during_imap(method: StartMethod) {
    let pool = Arc::new(pool_of(2, method));
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let p = Arc::clone(&pool);
    let consumer = std::thread::spawn(move || {
        let mut it = p.imap(entry!(slow_square), 0..3000u64).unwrap();
        let first = it.next().unwrap();
        started_tx.send(()).unwrap();
        let mut all = vec![first];
        all.extend(it);
        all
    });
    started_rx.recv().unwrap();
    pool.close();
    pool.join().unwrap();
    let results = consumer.join().unwrap();
    assert_eq!(results.len(), 3000);
    let mut ok = 0;
    let mut seen_err = false;
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(v) => {
                // The items after `join` fail, and none before them do.
                assert!(!seen_err, "item {i} ran after an earlier one failed");
                assert_eq!(*v, (i * i) as u64);
                ok += 1;
            }
            Err(e) => {
                assert!(e.is_disconnected(), "item {i}: {e}");
                seen_err = true;
            }
        }
    }
    assert!(ok >= 1);
    assert!(multiproc::active_children().is_empty());
}

#[test]
fn close_and_join_while_another_thread_consumes_an_imap() {
    each_method("close+join during imap", close_join_during_imap);
}

// ---------------------------------------------------------------------
// Initializers that kill their worker.

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
enum Death {
    Kill,
    KillCommand,
    Abort,
    Exit3,
    Exit0,
}

const DEATHS: [Death; 5] = [
    Death::Kill,
    Death::KillCommand,
    Death::Abort,
    Death::Exit3,
    Death::Exit0,
];

fn die(how: Death) -> ! {
    match how {
        Death::Kill => {
            let me = rustix::process::getpid();
            rustix::process::kill_process(me, rustix::process::Signal::KILL).unwrap();
            unreachable!("SIGKILL is not caught")
        }
        Death::KillCommand => {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &std::process::id().to_string()])
                .status();
            std::thread::sleep(Duration::from_secs(60));
            std::process::exit(99)
        }
        Death::Abort => std::process::abort(),
        Death::Exit3 => std::process::exit(3),
        Death::Exit0 => std::process::exit(0),
    }
}

/// Counts its runs; the first `ok` return, every later one dies `how`.
#[process_entry]
fn init_dies_after(runs: Value<u64>, ok: u64, how: Death) {
    let run = {
        let mut runs = runs.lock().unwrap();
        *runs += 1;
        *runs
    };
    if run > ok {
        die(how);
    }
}

#[process_entry]
fn die_now(how: Death) -> u64 {
    die(how)
}

fn initializer_always_dies(method: StartMethod) {
    for how in DEATHS {
        let runs = Value::new(0u64).unwrap();
        let err = Pool::builder()
            .processes(2)
            .start_method(method)
            .initializer(entry!(init_dies_after), (runs.clone(), 0, how))
            .build()
            .unwrap_err();
        match how {
            Death::Kill | Death::KillCommand => {
                assert!(err.is_signaled(), "{how:?}: {err}");
                assert_eq!(err.exitcode(), Some(-9), "{how:?}: {err}");
            }
            Death::Abort => assert_eq!(err.exitcode(), Some(-6), "{how:?}: {err}"),
            Death::Exit3 => assert_eq!(err.exitcode(), Some(3), "{how:?}: {err}"),
            // Not ready, and gone: a failed start.
            Death::Exit0 => assert!(err.is_spawn() || err.exitcode() == Some(0), "{err}"),
        }
        // The other worker may have been killed by the failing build while
        // it held the counter's lock: `load` takes the lock all the same.
        let ran = runs.load();
        assert!(ran >= 1, "{how:?}");
        let left = multiproc::active_children();
        assert!(left.is_empty(), "{how:?}: {err}: {left:?}");
    }
}

#[test]
fn an_initializer_that_kills_its_worker_fails_build() {
    each_method("initializer always dies", initializer_always_dies);
}

/// Every replacement dies in its initializer: the slot is given up after a
/// few attempts, tasks fail rather than wait, the pool says why, and
/// `join` returns.
fn every_replacement_dies_in_its_initializer(method: StartMethod) {
    for how in [Death::Kill, Death::Exit3] {
        let runs = Value::new(0u64).unwrap();
        let pool = Pool::builder()
            .processes(2)
            .start_method(method)
            .initializer(entry!(init_dies_after), (runs.clone(), 2, how))
            .build()
            .unwrap();
        // Both workers die in turn (a task each, which kills its worker).
        let pending: Vec<_> = (0..2)
            .map(|_| pool.apply_async(entry!(die_now), (Death::Exit3,)).unwrap())
            .collect();
        // Behind them, work that now has no worker to run it.
        let queued: Vec<_> = (0..20u64)
            .map(|x| pool.apply_async(entry!(square), (x,)).unwrap())
            .collect();
        for r in pending {
            let err = r.get().unwrap_err();
            assert_eq!(err.exitcode(), Some(3), "{err}");
        }
        let mut spawn_errors = 0;
        for (x, r) in queued.into_iter().enumerate() {
            match r.get() {
                Ok(v) => assert_eq!(v, (x * x) as u64),
                Err(e) => {
                    assert!(e.is_spawn(), "{how:?}: {e}");
                    spawn_errors += 1;
                }
            }
        }
        let err = pool.apply(entry!(square), (3,)).unwrap_err();
        assert!(err.is_spawn(), "{how:?}: {err}");
        assert!(err.to_string().contains("no workers left"), "{err}");
        let err = pool.map(entry!(square), 0..10u64).unwrap_err();
        assert!(err.is_spawn(), "{how:?}: {err}");
        let _ = spawn_errors;
        // Bounded attempts, not a spin: 2 good runs and a few bad per slot.
        let total = runs.load();
        assert!(
            (3..=2 + 2 * 10).contains(&total),
            "{how:?}: {total} initializer runs"
        );
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(runs.load(), total, "still restarting");
        pool.close();
        pool.join().unwrap();
        assert!(multiproc::active_children().is_empty());
    }
}

#[test]
fn when_every_replacement_dies_in_its_initializer_tasks_fail() {
    each_method(
        "replacements die in init",
        every_replacement_dies_in_its_initializer,
    );
}

// ---------------------------------------------------------------------
// max_tasks_per_child(1) under load.

fn max_tasks_one_under_load(method: StartMethod) {
    let pool = Pool::builder()
        .processes(2)
        .start_method(method)
        .max_tasks_per_child(1)
        .build()
        .unwrap();
    let got: Vec<u64> = pool
        .imap(entry!(square), 0..200u64)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(got, squares(0..200));
    let mut got: Vec<u64> = pool
        .imap_unordered(entry!(square), 0..200u64)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    got.sort_unstable();
    assert_eq!(got, squares(0..200));
    let pending: Vec<_> = (0..200u64)
        .map(|x| pool.apply_async(entry!(pid_of), (x,)).unwrap())
        .collect();
    let pids: std::collections::BTreeSet<u32> =
        pending.into_iter().map(|r| r.get().unwrap()).collect();
    // A fresh worker for every task.
    assert_eq!(pids.len(), 200);
    let got = pool.map_chunked(entry!(square), 0..200u64, 1).unwrap();
    assert_eq!(got, squares(0..200));
    pool.close();
    pool.join().unwrap();
    assert!(multiproc::active_children().is_empty());
}

#[test]
fn max_tasks_per_child_one_under_load_loses_nothing() {
    each_method("max_tasks_per_child(1)", max_tasks_one_under_load);
}

// ---------------------------------------------------------------------
// Values that fail to encode or decode, for some items only; huge results.

/// A `u64` newtype whose serde impls check the value with `ser` before it
/// is serialized and with `de` after it is deserialized: each may return an
/// error, or panic, for some values.
macro_rules! fragile_u64 {
    ($(#[$doc:meta])* $name:ident, ser: |$s:ident| $ser:expr, de: |$d:ident| $de:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq)]
        struct $name(u64);

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let $s = self.0;
                let checked: Result<(), &str> = $ser;
                checked.map_err(serde::ser::Error::custom)?;
                s.serialize_u64(self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<$name, D::Error> {
                let $d = u64::deserialize(d)?;
                let checked: Result<(), &str> = $de;
                checked.map_err(serde::de::Error::custom)?;
                Ok($name($d))
            }
        }
    };
}

fragile_u64!(
    /// Serializes, except 13, whose Serialize fails (in whichever process).
    Picky,
    ser: |n| if n == 13 { Err("13 does not serialize") } else { Ok(()) },
    de: |_n| Ok(())
);

fragile_u64!(
    /// Deserializes, except 7, whose Deserialize fails.
    Fussy,
    ser: |_n| Ok(()),
    de: |n| if n == 7 { Err("7 does not deserialize") } else { Ok(()) }
);

#[process_entry]
fn picky_result(x: u64) -> Picky {
    Picky(x)
}

#[process_entry]
fn fussy_arg(x: Fussy) -> u64 {
    x.0 * 2
}

#[process_entry]
fn picky_arg(x: Picky) -> u64 {
    x.0 + 1
}

fn items_that_fail_to_encode_or_decode(method: StartMethod) {
    let pool = pool_of(2, method);
    // A result that cannot be encoded in the worker: that item fails.
    let results: Vec<_> = pool.imap(entry!(picky_result), 0..30u64).unwrap().collect();
    assert_eq!(results.len(), 30);
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(v) => assert_eq!(v.0, i as u64),
            Err(e) => {
                assert_eq!(i, 13, "{e}");
                assert!(e.is_encode(), "{e}");
                assert!(e.to_string().contains("13 does not serialize"), "{e}");
            }
        }
    }
    assert!(results[13].is_err());
    let err = pool
        .map_chunked(entry!(picky_result), 0..30u64, 4)
        .unwrap_err();
    assert!(err.is_encode(), "{err}");
    assert!(err.to_string().contains("item 13 of"), "{err}");
    let err = pool.apply(entry!(picky_result), (13,)).unwrap_err();
    assert!(err.is_encode(), "{err}");

    // An argument the worker cannot decode: that item fails.
    let results: Vec<_> = pool
        .imap_chunked(entry!(fussy_arg), (0..20).map(Fussy), 3)
        .unwrap()
        .collect();
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(v) => assert_eq!(*v, i as u64 * 2),
            Err(e) => {
                assert_eq!(i, 7, "{e}");
                assert!(e.is_decode(), "{e}");
                assert!(e.to_string().contains("7 does not deserialize"), "{e}");
            }
        }
    }
    assert!(results[7].is_err());
    let err = pool.map(entry!(fussy_arg), (0..20).map(Fussy)).unwrap_err();
    assert!(err.is_decode(), "{err}");
    assert!(err.to_string().contains("item 7 of"), "{err}");

    // An argument that cannot be encoded here: map refuses, naming it;
    // imap fails that item only.
    let err = pool.map(entry!(picky_arg), (0..20).map(Picky)).unwrap_err();
    assert!(err.is_encode(), "{err}");
    assert!(err.to_string().contains("item 13 of"), "{err}");
    let results: Vec<_> = pool
        .imap_chunked(entry!(picky_arg), (0..20).map(Picky), 4)
        .unwrap()
        .collect();
    assert_eq!(results.len(), 20);
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(v) => assert_eq!(*v, i as u64 + 1),
            Err(e) => {
                assert_eq!(i, 13, "{e}");
                assert!(e.is_encode(), "{e}");
            }
        }
    }
    let err = pool
        .apply_async(entry!(picky_arg), (Picky(13),))
        .unwrap_err();
    assert!(err.is_encode(), "{err}");
    // The pool serves on, idle once done.
    assert_eq!(pool.map(entry!(square), 0..10u64).unwrap(), squares(0..10));
    pool.close();
    pool.join().unwrap();
}

#[test]
fn items_that_fail_to_encode_or_decode_fail_alone() {
    each_method(
        "encode/decode failures",
        items_that_fail_to_encode_or_decode,
    );
}

fn text_of_here(n: u64) -> String {
    char::from(b'a' + (n % 26) as u8)
        .to_string()
        .repeat(n as usize)
}

/// A string, not a `Vec<u8>`: serde takes a byte vector a byte at a time,
/// which in a debug build makes 64 MiB take seconds each way.
#[process_entry]
fn text_of(n: u64) -> String {
    text_of_here(n)
}

fn huge_result_beside_small_ones(method: StartMethod) {
    let pool = pool_of(2, method);
    const HUGE: u64 = 64 << 20;
    let sizes = [1, HUGE, 2, 3, HUGE + 1, 0, 5];
    for chunksize in [1, 3, 7] {
        let got = pool.map_chunked(entry!(text_of), sizes, chunksize).unwrap();
        assert_eq!(got.len(), sizes.len());
        for (n, v) in sizes.iter().zip(&got) {
            assert_eq!(v.len() as u64, *n);
            // Compared whole (a memcmp): char by char is slow in debug.
            assert!(*v == text_of_here(*n));
        }
    }
    let mut unordered: Vec<usize> = pool
        .imap_unordered(entry!(text_of), sizes)
        .unwrap()
        .map(|r| r.unwrap().len())
        .collect();
    unordered.sort_unstable();
    let mut expected: Vec<usize> = sizes.iter().map(|&n| n as usize).collect();
    expected.sort_unstable();
    assert_eq!(unordered, expected);
}

#[test]
fn a_huge_result_beside_small_ones_comes_back_whole() {
    each_method("huge result", huge_result_beside_small_ones);
}

// ---------------------------------------------------------------------
// Tasks that start pools or processes of their own.

#[process_entry]
fn nested_pool(x: u64) -> Result<u64, String> {
    let pool = Pool::new(1).map_err(|e| format!("{:?}: {e}", e.kind()))?;
    pool.apply(entry!(square), (x,)).map_err(|e| e.to_string())
}

#[process_entry]
fn nested_spawn(x: u64) -> Result<u64, String> {
    let child = multiproc::spawn!(square, x).map_err(|e| format!("{:?}: {e}", e.kind()))?;
    child.join().map_err(|e| e.to_string())
}

fn nested_pool_and_spawn(method: StartMethod) {
    let pool = pool_of(2, method);
    // Workers are daemons: both refuse, promptly, with a Spawn error.
    for r in pool.map(entry!(nested_pool), 0..4u64).unwrap() {
        let e = r.unwrap_err();
        assert!(e.starts_with("Spawn"), "{e}");
    }
    for r in pool.map(entry!(nested_spawn), 0..4u64).unwrap() {
        let e = r.unwrap_err();
        assert!(e.starts_with("Spawn"), "{e}");
    }
    assert_eq!(pool.map(entry!(square), 0..4u64).unwrap(), squares(0..4));
}

#[test]
fn a_task_starting_a_pool_or_a_process_is_refused_promptly() {
    each_method("nested pool / spawn", nested_pool_and_spawn);
}

// ---------------------------------------------------------------------
// Edge sizes.

fn edge_sizes(method: StartMethod) {
    let pool = pool_of(2, method);
    assert!(
        pool.map(entry!(square), Vec::<u64>::new())
            .unwrap()
            .is_empty()
    );
    assert_eq!(pool.map(entry!(square), [7u64]).unwrap(), [49]);
    assert_eq!(pool.map_chunked(entry!(square), [7u64], 0).unwrap(), [49]);
    assert_eq!(
        pool.map_chunked(entry!(square), 0..5u64, 0).unwrap(),
        squares(0..5)
    );
    assert_eq!(
        pool.map_chunked(entry!(square), 0..5u64, 6).unwrap(),
        squares(0..5)
    );
    assert_eq!(
        pool.map_chunked(entry!(square), 0..5u64, usize::MAX)
            .unwrap(),
        squares(0..5)
    );
    assert_eq!(
        pool.starmap_chunked(entry!(square), (0..5u64).map(|x| (x,)), 0)
            .unwrap(),
        squares(0..5)
    );
    for ordered in [true, false] {
        for chunksize in [0, 1, 5, 6, 1 << 20] {
            let it = if ordered {
                pool.imap_chunked(entry!(square), 0..5u64, chunksize)
            } else {
                pool.imap_unordered_chunked(entry!(square), 0..5u64, chunksize)
            };
            let mut got: Vec<u64> = it.unwrap().collect::<Result<_, _>>().unwrap();
            got.sort_unstable();
            assert_eq!(got, squares(0..5), "chunksize {chunksize}");
        }
        let it = if ordered {
            pool.imap(entry!(square), Vec::<u64>::new())
        } else {
            pool.imap_unordered(entry!(square), Vec::<u64>::new())
        };
        let mut it = it.unwrap();
        assert!(it.next().is_none());
        assert!(it.next().is_none());
        assert!(it.next_timeout(Duration::ZERO).is_none());
    }
}

#[test]
fn edge_sizes_of_input_and_chunk() {
    each_method("edge sizes", edge_sizes);
}

/// A chunk size far beyond the input: nothing is allocated or computed
/// for it, so it neither panics nor aborts.
fn imap_with_a_huge_chunk_size(method: StartMethod) {
    let pool = pool_of(2, method);
    for chunksize in [usize::MAX, usize::MAX / 64, 1 << 40] {
        let got: Vec<u64> = pool
            .imap_chunked(entry!(square), 0..5u64, chunksize)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(got, squares(0..5), "chunksize {chunksize}");
        let mut got: Vec<u64> = pool
            .imap_unordered_chunked(entry!(square), 0..5u64, chunksize)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        got.sort_unstable();
        assert_eq!(got, squares(0..5), "chunksize {chunksize}");
    }
}

#[test]
fn imap_with_a_chunk_size_far_beyond_its_input() {
    each_method("imap huge chunk size", imap_with_a_huge_chunk_size);
}

// ---------------------------------------------------------------------
// Leaks over many pools.

/// This process's open descriptors, each as `fd -> target`.
fn fd_links() -> Vec<String> {
    let mut links: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .map(|e| {
            let target = std::fs::read_link(e.path()).unwrap_or_default();
            format!(
                "{} -> {}",
                e.file_name().to_string_lossy(),
                target.display()
            )
        })
        .collect();
    links.sort();
    links
}

/// Descriptors the parent may hold for the fork server's spares (two kept
/// announced after quick starts, each a pidfd, two sockets and a status
/// pipe): present or not depending on timing, so not a leak.
fn spare_fds(method: StartMethod) -> usize {
    match method {
        StartMethod::ForkServer => 2 * 4,
        _ => 0,
    }
}

/// Waits until no more descriptors are open than `fds` (and the fork
/// server's spares), failing with those opened since `before`.
fn no_fd_leak(what: &str, method: StartMethod, fds: usize, before: &[String]) {
    let start = std::time::Instant::now();
    while fd_count() > fds + spare_fds(method) {
        if start.elapsed() > common::BOUND {
            let after = fd_links();
            let new: Vec<_> = after.iter().filter(|l| !before.contains(l)).collect();
            panic!("{method:?}: descriptors left open by {what}: {new:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// This process's children (from `/proc`), the fork server aside.
fn child_count() -> usize {
    let me = std::process::id();
    common::processes()
        .into_iter()
        .filter(|&(_, state, ppid)| ppid == me && state != b'Z')
        .count()
}

fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

fn zombie_count() -> usize {
    let me = std::process::id();
    common::processes()
        .into_iter()
        .filter(|&(_, state, ppid)| ppid == me && state == b'Z')
        .count()
}

fn many_pools(method: StartMethod) {
    // Warm up (the fork server, the reaper thread, …).
    for _ in 0..2 {
        let pool = pool_of(2, method);
        assert_eq!(pool.map(entry!(square), 0..10u64).unwrap(), squares(0..10));
    }
    common::eventually("warm-up children are reaped", || {
        multiproc::active_children().is_empty() && zombie_count() == 0
    });
    let fds = fd_count();
    let children = child_count();
    let threads = thread_count();
    for round in 0..30u64 {
        let pool = pool_of(2, method);
        let got = pool.map(entry!(square), 0..20u64).unwrap();
        assert_eq!(got, squares(0..20));
        match round % 3 {
            0 => drop(pool),
            1 => {
                pool.close();
                pool.join().unwrap();
            }
            _ => {
                let _pending = pool.apply_async(entry!(slow_square), (3,)).unwrap();
                let _it = pool.imap(entry!(slow_square), 0..100u64).unwrap();
                pool.terminate();
            }
        }
    }
    common::eventually("every worker is gone", || {
        multiproc::active_children().is_empty() && child_count() <= children && zombie_count() == 0
    });
    common::eventually("no descriptor is left open", || {
        fd_count() <= fds + spare_fds(method)
    });
    common::eventually("no thread is left running", || thread_count() <= threads);
}

#[test]
fn many_pools_leave_no_process_or_descriptor_behind() {
    each_method("many pools", many_pools);
}

// ---------------------------------------------------------------------
// terminate while another thread waits in join.

fn terminate_during_join(method: StartMethod) {
    let pool = Arc::new(pool_of(2, method));
    let never = Event::new().unwrap();
    let stuck = pool
        .apply_async(entry!(wait_for), (never.clone(),))
        .unwrap();
    pool.close();
    let p = Arc::clone(&pool);
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let joiner = std::thread::spawn(move || {
        let _ = tid_tx.send(rustix::thread::gettid().as_raw_pid() as u32);
        p.join()
    });
    let tid = tid_rx.recv().unwrap();
    common::eventually("join returns or waits", || {
        joiner.is_finished() || common::state_of(tid) == Some(b'S')
    });
    assert!(
        !joiner.is_finished(),
        "join did not wait for the running task"
    );
    pool.terminate();
    joiner.join().unwrap().unwrap();
    let err = stuck.get().unwrap_err();
    assert!(err.is_disconnected(), "{err}");
    assert!(multiproc::active_children().is_empty());
}

#[test]
fn terminate_ends_a_join_waiting_in_another_thread() {
    each_method("terminate during join", terminate_during_join);
}

// ---------------------------------------------------------------------
// A worker that dies while a large chunk is on its way to it.

#[process_entry]
fn die_after(ms: u64, code: i32) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::exit(code)
}

#[process_entry]
fn len_of(s: String) -> usize {
    s.len()
}

fn large_chunk_to_a_dying_worker(method: StartMethod) {
    let pool = pool_of(1, method);
    for round in 0..3 {
        // Quick chunks first, so the worker is sent several at a time.
        assert_eq!(
            pool.map_chunked(entry!(square), 0..200u64, 1).unwrap(),
            squares(0..200)
        );
        let dying = pool.apply_async(entry!(die_after), (20, 4)).unwrap();
        let large: Vec<_> = (0..3)
            .map(|i| {
                pool.apply_async(entry!(len_of), ("y".repeat((32 << 20) + i),))
                    .unwrap()
            })
            .collect();
        let small = pool.apply_async(entry!(square), (11,)).unwrap();
        let err = dying.get().unwrap_err();
        assert_eq!(err.exitcode(), Some(4), "round {round}: {err}");
        // What it held and had not started runs on its replacement.
        for (i, r) in large.into_iter().enumerate() {
            assert_eq!(r.get().unwrap(), (32 << 20) + i, "round {round}");
        }
        assert_eq!(small.get().unwrap(), 121);
    }
}

#[test]
fn chunks_sent_to_a_worker_that_dies_run_on_its_replacement() {
    each_method(
        "large chunk to a dying worker",
        large_chunk_to_a_dying_worker,
    );
}

// ---------------------------------------------------------------------
// serde impls that panic (rather than fail) in the worker.

fragile_u64!(
    /// Its Serialize panics for 13.
    BoomOut,
    ser: |n| {
        assert_ne!(n, 13, "BoomOut 13 will not serialize");
        Ok(())
    },
    de: |_n| Ok(())
);

fragile_u64!(
    /// Its Deserialize panics for 7.
    Boom,
    ser: |_n| Ok(()),
    de: |n| {
        assert_ne!(n, 7, "Boom 7 will not deserialize");
        Ok(())
    }
);

#[process_entry]
fn boom_result(x: u64) -> BoomOut {
    BoomOut(x)
}

#[process_entry]
fn boom_arg(x: Boom) -> u64 {
    x.0
}

fn panicking_serde_in_the_worker(method: StartMethod) {
    let pool = pool_of(2, method);
    for (name, results) in [
        (
            "result",
            pool.imap(entry!(boom_result), 0..20u64)
                .unwrap()
                .map(|r| r.map(|b| b.0))
                .collect::<Vec<_>>(),
        ),
        (
            "argument",
            pool.imap(entry!(boom_arg), (0..20).map(Boom))
                .unwrap()
                .collect::<Vec<_>>(),
        ),
    ] {
        let bad = if name == "result" { 13 } else { 7 };
        let expected: Vec<u64> = (0..20).collect();
        assert_eq!(results.len(), expected.len(), "{name}");
        for (x, r) in expected.iter().zip(&results) {
            match r {
                Ok(v) => assert_eq!(v, x, "{name}"),
                Err(e) => {
                    assert_eq!(*x, bad, "{name}: {e}");
                    assert!(e.is_panicked(), "{name}: {e}");
                    assert!(e.to_string().contains("will not"), "{name}: {e}");
                }
            }
        }
        let at = expected.iter().position(|&x| x == bad).unwrap();
        assert!(results[at].is_err(), "{name}");
    }
    assert_eq!(pool.map(entry!(square), 0..10u64).unwrap(), squares(0..10));
}

#[test]
fn serde_impls_that_panic_in_the_worker_fail_their_item_only() {
    each_method("panicking serde", panicking_serde_in_the_worker);
}

// ---------------------------------------------------------------------
// The fork server killed under a pool.

#[process_entry]
fn pid() -> u32 {
    std::process::id()
}

fn parent_of(pid: u32) -> u32 {
    common::processes()
        .into_iter()
        .find(|&(p, _, _)| p == pid)
        .map(|(_, _, ppid)| ppid)
        .unwrap()
}

#[test]
fn a_pool_serves_on_after_its_fork_server_is_killed() {
    if !common::fork_server_or_skip() {
        return;
    }
    let _alone = alone();
    bounded("fork server killed", NO_HANG, || {
        let pool = pool_of(2, StartMethod::ForkServer);
        let never = Event::new().unwrap();
        for _ in 0..2 {
            let worker = pool.apply(entry!(pid), ()).unwrap();
            let server = parent_of(worker);
            assert_ne!(server, std::process::id());
            let held = pool
                .apply_async(entry!(wait_for), (never.clone(),))
                .unwrap();
            let server_pid = rustix::process::Pid::from_raw(server as i32).unwrap();
            rustix::process::kill_process(server_pid, rustix::process::Signal::KILL).unwrap();
            // The workers die with it (daemons); the task held fails.
            let err = held.get().unwrap_err();
            assert!(
                err.is_signaled() || err.is_exited() || err.is_disconnected(),
                "{err}"
            );
            // Replaced (by a new server), and the pool serves.
            let mut served = false;
            for _ in 0..5 {
                match pool.map(entry!(square), 0..20u64) {
                    Ok(got) => {
                        assert_eq!(got, squares(0..20));
                        served = true;
                        break;
                    }
                    // Its exit status went with the server: how is unknown.
                    Err(e) => assert!(
                        e.is_signaled() || e.is_exited() || e.is_disconnected(),
                        "{e}"
                    ),
                }
            }
            assert!(served, "the pool did not serve again");
            let after = pool.apply(entry!(pid), ()).unwrap();
            assert_ne!(parent_of(after), server, "still the killed server's child");
        }
        pool.close();
        pool.join().unwrap();
    });
}

// ---------------------------------------------------------------------
// An imap input that panics part-way (Python's iterable that raises).

fn imap_input_panics(method: StartMethod) {
    let pool = pool_of(2, method);
    for ordered in [true, false] {
        let input = (0..1000u64).inspect(|&x| assert_ne!(x, 150, "the input gives out at 150"));
        let it = if ordered {
            pool.imap(entry!(slow_square), input)
        } else {
            pool.imap_unordered(entry!(slow_square), input)
        }
        .unwrap();
        let mut it = std::panic::AssertUnwindSafe(it);
        let mut got = Vec::new();
        let caught = std::panic::catch_unwind(move || {
            for r in &mut *it {
                got.push(r.unwrap());
            }
        });
        let panic = caught.unwrap_err();
        let text = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(text.contains("gives out at 150"), "{text}");
        // The pool serves on, and has nothing left over from it.
        assert_eq!(pool.map(entry!(square), 0..50u64).unwrap(), squares(0..50));
    }
    pool.close();
    pool.join().unwrap();
}

#[test]
fn an_imap_whose_input_panics_leaves_the_pool_serving() {
    each_method("imap input panics", imap_input_panics);
}

/// Python's test_pool_worker_lifetime_early_close: tasks in flight with
/// workers recycled after each, then close and join: every result is in.
fn max_tasks_early_close(method: StartMethod) {
    let pool = Pool::builder()
        .processes(2)
        .start_method(method)
        .max_tasks_per_child(1)
        .build()
        .unwrap();
    let pending: Vec<_> = (0..40u64)
        .map(|x| pool.apply_async(entry!(slow_square), (x,)).unwrap())
        .collect();
    let mapped = pool.map_async(entry!(square), 0..40u64).unwrap();
    pool.close();
    pool.join().unwrap();
    for (x, r) in pending.into_iter().enumerate() {
        assert!(r.ready(), "item {x} not in after join");
        assert_eq!(r.get().unwrap(), (x * x) as u64);
    }
    assert!(mapped.ready());
    assert_eq!(mapped.get().unwrap(), squares(0..40));
    assert!(multiproc::active_children().is_empty());
}

#[test]
fn max_tasks_per_child_then_close_and_join_keeps_every_result() {
    each_method("max_tasks early close", max_tasks_early_close);
}

// ---------------------------------------------------------------------
// Stress: workers killed from outside mid-task while several threads
// submit, then terminate or close+join in the middle of it all.

#[process_entry]
fn pid_and_square(x: u64) -> (u32, u64) {
    std::thread::sleep(Duration::from_millis(2));
    (std::process::id(), x * x)
}

/// Checks one result of `pid_and_square(x)`: right, or the death of its
/// worker by SIGKILL (or the pool's end, if `ending`); records the pid.
fn check_result(
    x: u64,
    r: multiproc::Result<(u32, u64)>,
    seen: &std::sync::Mutex<Vec<u32>>,
    killed: &AtomicU64,
    ending: bool,
) {
    match r {
        Ok((pid, v)) => {
            assert_eq!(v, x * x);
            seen.lock().unwrap().push(pid);
        }
        Err(e) if e.is_signaled() => {
            assert_eq!(e.exitcode(), Some(-9), "{e}");
            killed.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) if ending && e.is_disconnected() => {}
        Err(e) => panic!("item {x}: {e}"),
    }
}

fn killed_under_load(method: StartMethod, end: u8) {
    let pool = Arc::new(
        Pool::builder()
            .processes(2)
            .start_method(method)
            .build()
            .unwrap(),
    );
    let seen = Arc::new(std::sync::Mutex::new(Vec::<u32>::new()));
    let killed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let kills = Arc::new(AtomicU64::new(0));
    let killer = {
        let (seen, stop, kills) = (Arc::clone(&seen), Arc::clone(&stop), Arc::clone(&kills));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(25));
                let last = seen.lock().unwrap().last().copied();
                if let Some(pid) = last {
                    let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
                    if rustix::process::kill_process(pid, rustix::process::Signal::KILL).is_ok() {
                        kills.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    let ending = end != 0;
    let submitters: Vec<_> = (0..3u64)
        .map(|t| {
            let (pool, seen, killed) = (Arc::clone(&pool), Arc::clone(&seen), Arc::clone(&killed));
            std::thread::spawn(move || {
                for round in 0..4u64 {
                    let base = t * 10_000 + round * 1000;
                    match t {
                        0 => match pool.imap_unordered(entry!(pid_and_square), base..base + 60) {
                            Ok(it) => {
                                let mut n = 0;
                                for r in it {
                                    n += 1;
                                    if let Ok((_, v)) = &r {
                                        assert_eq!(v.isqrt() * v.isqrt(), *v);
                                        assert!((base..base + 60).contains(&v.isqrt()));
                                    }
                                    check_result(
                                        r.as_ref().map_or(0, |(_, v)| v.isqrt()),
                                        r,
                                        &seen,
                                        &killed,
                                        ending,
                                    );
                                }
                                assert_eq!(n, 60);
                            }
                            Err(e) => assert!(ending && e.is_disconnected(), "{e}"),
                        },
                        1 => match pool.imap(entry!(pid_and_square), base..base + 60) {
                            Ok(it) => {
                                let results: Vec<_> = it.collect();
                                assert_eq!(results.len(), 60);
                                for (x, r) in (base..).zip(results) {
                                    check_result(x, r, &seen, &killed, ending);
                                }
                            }
                            Err(e) => assert!(ending && e.is_disconnected(), "{e}"),
                        },
                        _ => {
                            let pending: Vec<_> = (base..base + 60)
                                .map(|x| (x, pool.apply_async(entry!(pid_and_square), (x,))))
                                .collect();
                            for (x, r) in pending {
                                match r {
                                    Ok(r) => check_result(x, r.get(), &seen, &killed, ending),
                                    Err(e) => assert!(ending && e.is_disconnected(), "{e}"),
                                }
                            }
                        }
                    }
                }
            })
        })
        .collect();
    // Ended (or not) once workers are being killed under the load.
    common::eventually("a worker is killed under load", || {
        kills.load(Ordering::Relaxed) > 0
    });
    match end {
        1 => pool.terminate(),
        2 => {
            pool.close();
            pool.join().unwrap();
        }
        _ => {}
    }
    for s in submitters {
        s.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    killer.join().unwrap();
    if end == 0 {
        assert!(
            kills.load(Ordering::Relaxed) > 0,
            "the killer killed nothing"
        );
        // Still serving, with no worker lost for good (a worker killed
        // idle just before the killer stopped may fail one more map, with
        // how it died, before it is seen dead).
        let got = match pool.map(entry!(pid_and_square), 0..100u64) {
            Ok(got) => got,
            Err(e) => {
                assert!(e.is_signaled(), "{e}");
                pool.map(entry!(pid_and_square), 0..100u64).unwrap()
            }
        };
        assert!(
            got.iter()
                .enumerate()
                .all(|(x, (_, v))| *v == (x * x) as u64)
        );
        let pids: std::collections::BTreeSet<u32> = got.iter().map(|(p, _)| *p).collect();
        assert!(!pids.is_empty());
        pool.close();
        pool.join().unwrap();
    }
    drop(pool);
    assert!(multiproc::active_children().is_empty());
}

fn killed_under_load_then_nothing(method: StartMethod) {
    killed_under_load(method, 0);
}

fn killed_under_load_then_terminate(method: StartMethod) {
    killed_under_load(method, 1);
}

fn killed_under_load_then_close_join(method: StartMethod) {
    killed_under_load(method, 2);
}

#[test]
fn workers_killed_from_outside_under_load_lose_nothing_else() {
    each_method("killed under load", killed_under_load_then_nothing);
}

#[test]
fn terminate_in_the_middle_of_kills_and_load() {
    each_method("terminate amid kills", killed_under_load_then_terminate);
}

#[test]
fn close_and_join_in_the_middle_of_kills_and_load() {
    each_method("close+join amid kills", killed_under_load_then_close_join);
}

// ---------------------------------------------------------------------
// Leaks over one long-lived pool whose workers keep dying, and over
// builds that fail part-way.

fn deaths_leak_nothing(method: StartMethod) {
    let pool = pool_of(2, method);
    let kill_some = |n: u64| {
        for i in 0..n {
            let how = [Death::Kill, Death::Exit3, Death::Abort][(i % 3) as usize];
            let err = pool.apply(entry!(die_now), (how,)).unwrap_err();
            assert!(err.is_signaled() || err.is_exited(), "{err}");
            assert_eq!(pool.map(entry!(square), 0..10u64).unwrap(), squares(0..10));
        }
    };
    kill_some(4);
    common::eventually("warm-up deaths are reaped", || zombie_count() == 0);
    let (fds, threads) = (fd_count(), thread_count());
    let before = fd_links();
    kill_some(40);
    let start = std::time::Instant::now();
    while fd_count() > fds + spare_fds(method) {
        if start.elapsed() > common::BOUND {
            let after = fd_links();
            let new: Vec<_> = after.iter().filter(|l| !before.contains(l)).collect();
            panic!("{method:?}: descriptors left open by dead workers: {new:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    common::eventually("no thread is left running for dead workers", || {
        thread_count() <= threads
    });
    common::eventually("just the two live workers are left", || {
        multiproc::active_children().len() == 2 && zombie_count() == 0
    });
}

#[test]
fn workers_that_keep_dying_leak_no_descriptor_or_thread() {
    each_method("deaths leak nothing", deaths_leak_nothing);
}

/// Counts its runs; run `bad` panics.
#[process_entry]
fn init_fails_at(runs: Value<u64>, bad: u64) {
    let run = {
        let mut runs = runs.lock().unwrap();
        *runs += 1;
        *runs
    };
    assert_ne!(run, bad, "initializer run {bad} fails");
}

fn failed_builds_leak_nothing(method: StartMethod) {
    // Warm up.
    drop(pool_of(1, method));
    let (fds, threads) = (fd_count(), thread_count());
    for round in 0..6u64 {
        let runs = Value::new(0u64).unwrap();
        let err = Pool::builder()
            .processes(8)
            .start_method(method)
            .initializer(entry!(init_fails_at), (runs.clone(), 1 + round % 8))
            .build()
            .unwrap_err();
        assert!(err.is_panicked(), "{err}");
        assert!(err.to_string().contains("fails"), "{err}");
        let left = multiproc::active_children();
        assert!(left.is_empty(), "{left:?}");
    }
    common::eventually("failed builds leave no descriptor", || {
        fd_count() <= fds + spare_fds(method)
    });
    common::eventually("failed builds leave no thread", || {
        thread_count() <= threads
    });
    assert_eq!(zombie_count(), 0);
}

#[test]
fn builds_that_fail_part_way_leak_nothing() {
    each_method("failed builds", failed_builds_leak_nothing);
}

// ---------------------------------------------------------------------
// Results holding more handles than this process may open.

#[process_entry]
fn make_events(n: u64) -> Vec<Event> {
    (0..n).map(|_| Event::new().unwrap()).collect()
}

const FEW_FDS: &str = "POOL_HUNT_FEW_FDS";

/// Run alone (it lowers this process's descriptor limit) by
/// [`results_beyond_the_descriptor_limit_fail_rather_than_hang`].
#[test]
#[ignore = "run by results_beyond_the_descriptor_limit_fail_rather_than_hang"]
fn results_beyond_the_descriptor_limit_inner() {
    if !common::run_by_outer_test(
        FEW_FDS,
        "results_beyond_the_descriptor_limit_fail_rather_than_hang",
    ) {
        return;
    }
    for method in common::start_methods() {
        bounded("results beyond the fd limit", NO_HANG, move || {
            let pool = pool_of(1, method);
            assert_eq!(pool.map(entry!(square), 0..4u64).unwrap(), squares(0..4));
            use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
            let before = getrlimit(Resource::Nofile);
            let soft = fd_count() as u64 + 120;
            setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: Some(soft),
                    maximum: before.maximum,
                },
            )
            .unwrap();
            let mut held = Vec::new();
            let mut failed = 0;
            for _ in 0..8 {
                match pool.apply_async(entry!(make_events), (40,)) {
                    Ok(r) => match r.get() {
                        Ok(events) => held.push(events),
                        Err(e) => {
                            failed += 1;
                            println!("a result beyond the limit: {e}");
                        }
                    },
                    Err(e) => {
                        failed += 1;
                        println!("a submit beyond the limit: {e}");
                    }
                }
            }
            assert!(held.len() < 8, "the limit did not bite");
            assert!(failed > 0);
            drop(held);
            setrlimit(Resource::Nofile, before).unwrap();
            // With descriptors free again, the pool serves again: slots
            // whose replacements could not start for want of descriptors
            // try again for the next job.
            assert_eq!(pool.map(entry!(square), 0..10u64).unwrap(), squares(0..10));
            pool.close();
            pool.join().unwrap();
        });
    }
}

#[test]
fn results_beyond_the_descriptor_limit_fail_rather_than_hang() {
    let _alone = alone();
    common::run_alone("results_beyond_the_descriptor_limit_inner", FEW_FDS);
}

// ---------------------------------------------------------------------
// terminate from two threads at once: each returns only once every
// worker is reaped, as its docs say.

fn is_gone(pid: u32) -> bool {
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn concurrent_terminates(method: StartMethod) {
    for round in 0..10 {
        let pool = Arc::new(pool_of(4, method));
        let pids: std::collections::BTreeSet<u32> = pool
            .map_chunked(entry!(pid_of), 0..400u64, 1)
            .unwrap()
            .into_iter()
            .collect();
        let never = Event::new().unwrap();
        let _busy: Vec<_> = (0..4)
            .map(|_| {
                pool.apply_async(entry!(wait_for), (never.clone(),))
                    .unwrap()
            })
            .collect();
        let barrier = Arc::new(std::sync::Barrier::new(3));
        let terminators: Vec<_> = (0..3)
            .map(|_| {
                let (pool, barrier, pids) = (Arc::clone(&pool), Arc::clone(&barrier), pids.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    pool.terminate();
                    let alive: Vec<u32> = pids.iter().copied().filter(|&p| !is_gone(p)).collect();
                    assert!(
                        alive.is_empty(),
                        "round {round}: terminate returned with workers {alive:?} not reaped"
                    );
                })
            })
            .collect();
        for t in terminators {
            t.join().unwrap();
        }
    }
}

#[test]
fn concurrent_terminates_each_wait_for_every_worker() {
    each_method("concurrent terminates", concurrent_terminates);
}

// ---------------------------------------------------------------------
// An initializer whose arguments hold handles, run in replacement after
// replacement: each gets working handles, and none is left open here.

static INIT_EVENT: std::sync::OnceLock<Event> = std::sync::OnceLock::new();

#[process_entry]
fn init_with_handles(event: Event, counter: Value<u64>) {
    *counter.lock().unwrap() += 1;
    let _ = INIT_EVENT.set(event);
}

#[process_entry]
fn init_event_is_set(_x: u64) -> bool {
    INIT_EVENT.get().is_some_and(Event::is_set)
}

fn initializer_handles_across_replacements(method: StartMethod) {
    let event = Event::new().unwrap();
    let counter = Value::new(0u64).unwrap();
    event.set();
    let pool = Pool::builder()
        .processes(2)
        .start_method(method)
        .max_tasks_per_child(1)
        .initializer(entry!(init_with_handles), (event.clone(), counter.clone()))
        .build()
        .unwrap();
    let warm = pool
        .map_chunked(entry!(init_event_is_set), 0..10u64, 1)
        .unwrap();
    assert!(warm.iter().all(|&b| b));
    let (fds, threads) = (fd_count(), thread_count());
    let before = fd_links();
    let got = pool
        .map_chunked(entry!(init_event_is_set), 0..150u64, 1)
        .unwrap();
    assert!(
        got.iter().all(|&b| b),
        "a replacement's initializer event is not set"
    );
    assert!(counter.load() >= 160, "{}", counter.load());
    // A slot may be between workers when counted (each recycled after a
    // task): up to one worker's descriptors (pidfd, two sockets, a lane)
    // a slot either way. 150 replacements leaking would be far more.
    no_fd_leak("replacements", method, fds + 2 * 4, &before);
    // Threads likewise: a worker's connection has a writer thread here,
    // so a slot between workers when counted had one thread fewer (or, its
    // old one not yet gone, one more): up to one a slot either way.
    common::eventually("no thread is left by replacements", || {
        thread_count() <= threads + 2
    });
    pool.close();
    pool.join().unwrap();
}

#[test]
fn an_initializer_with_handles_serves_every_replacement_without_leaks() {
    each_method(
        "initializer handles",
        initializer_handles_across_replacements,
    );
}

// ---------------------------------------------------------------------
// Many items holding handles in one chunk: more, all told, than one
// message carries (each item holds one).

#[process_entry]
fn is_set_then(event: Event, x: u64) -> u64 {
    assert!(event.is_set());
    x
}

fn many_handle_arguments_in_one_chunk(method: StartMethod) {
    let pool = pool_of(2, method);
    let event = Event::new().unwrap();
    event.set();
    let expected: Vec<u64> = (0..2400).collect();
    // The default chunk size: 300 items, each one handle.
    let got = pool
        .starmap(
            entry!(is_set_then),
            (0..2400u64).map(|x| (event.clone(), x)),
        )
        .unwrap();
    assert_eq!(got, expected);
    let got = pool
        .starmap_chunked(
            entry!(is_set_then),
            (0..2400u64).map(|x| (event.clone(), x)),
            1000,
        )
        .unwrap();
    assert_eq!(got, expected);
    let pending = pool
        .starmap_async(
            entry!(is_set_then),
            (0..2400u64).map(|x| (event.clone(), x)),
        )
        .unwrap();
    assert_eq!(pending.get().unwrap(), expected);
    for ordered in [true, false] {
        let events = vec![event.clone(); 2400];
        let it = if ordered {
            pool.imap_chunked(entry!(wait_for), events, 700)
        } else {
            pool.imap_unordered_chunked(entry!(wait_for), events, 700)
        };
        let got: Vec<u32> = it.unwrap().collect::<Result<_, _>>().unwrap();
        assert_eq!(got, vec![7; 2400]);
    }
    // One item with more handles than any message carries still fails
    // alone, naming itself.
    let items: Vec<Vec<Event>> = vec![vec![event.clone()], vec![event.clone(); 300], vec![]];
    let err = pool
        .map_chunked(entry!(count_set), items.clone(), 3)
        .unwrap_err();
    assert!(err.is_encode(), "{err}");
    assert!(err.to_string().contains("item 1 of"), "{err}");
    let results: Vec<_> = pool
        .imap_chunked(entry!(count_set), items, 3)
        .unwrap()
        .collect();
    assert_eq!(results[0].as_ref().unwrap(), &1);
    assert!(results[1].as_ref().unwrap_err().is_encode());
    assert_eq!(results[2].as_ref().unwrap(), &0);
    pool.close();
    pool.join().unwrap();
}

#[process_entry]
fn count_set(events: Vec<Event>) -> usize {
    events.iter().filter(|e| e.is_set()).count()
}

#[test]
fn many_items_holding_handles_run_whatever_the_chunk_size() {
    each_method("many handle arguments", many_handle_arguments_in_one_chunk);
}
