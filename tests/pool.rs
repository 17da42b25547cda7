//! Pool: map / starmap / imap / imap_unordered / apply_async over real
//! worker processes, with tasks that panic and workers that die.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use multiproc::{
    Connection, ErrorKind, Event, Fd, Pipe, Pool, Queue, RecvTimeoutError, Value, entry,
    process_entry,
};

#[process_entry]
fn square(x: u64) -> u64 {
    x * x
}

#[process_entry]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[process_entry]
fn pid() -> u32 {
    std::process::id()
}

#[process_entry]
fn pid_of(_x: u64) -> u32 {
    std::process::id()
}

#[process_entry]
fn panics_at(x: u64, bad: u64) -> u64 {
    if x == bad {
        panic!("item {x} is bad");
    }
    x
}

/// How a task ends its own worker.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
enum Death {
    Kill,
    Abort,
    Exit3,
    Exit0,
}

#[process_entry]
fn dies_at(x: u64, bad: u64, how: Death) -> u64 {
    if x == bad {
        match how {
            Death::Kill => {
                let me = rustix::process::getpid();
                rustix::process::kill_process(me, rustix::process::Signal::KILL).unwrap();
                unreachable!("SIGKILL is not caught")
            }
            Death::Abort => std::process::abort(),
            Death::Exit3 => std::process::exit(3),
            Death::Exit0 => std::process::exit(0),
        }
    }
    x * 10
}

#[process_entry]
fn wait_for(event: Event) -> u32 {
    event.wait();
    7
}

#[process_entry]
fn put_into(q: Queue<u64>, x: u64) {
    q.put(x * 2).unwrap();
}

#[process_entry]
fn write_to(fd: Fd, text: String) {
    let mut stream = UnixStream::from(fd.into_owned_fd());
    stream.write_all(text.as_bytes()).unwrap();
}

static INIT_SEEN: AtomicU64 = AtomicU64::new(0);

#[process_entry]
fn init_counting(counter: Value<u64>, mark: u64) {
    *counter.lock().unwrap() += 1;
    INIT_SEEN.store(mark, Ordering::SeqCst);
}

#[process_entry]
fn init_mark(_x: u64) -> u64 {
    INIT_SEEN.load(Ordering::SeqCst)
}

#[process_entry]
fn init_panics() {
    panic!("no setup today");
}

fn expect_death(err: &multiproc::Error, how: Death) {
    match how {
        Death::Kill => {
            assert!(err.is_signaled(), "{err}");
            assert_eq!(err.exitcode(), Some(-9), "{err}");
        }
        Death::Abort => {
            assert!(err.is_signaled(), "{err}");
            assert_eq!(err.exitcode(), Some(-6), "{err}");
        }
        Death::Exit3 => {
            assert!(err.is_exited(), "{err}");
            assert_eq!(err.exitcode(), Some(3), "{err}");
        }
        // A clean exit in the middle of a task is an exit too.
        Death::Exit0 => {
            assert!(err.is_exited(), "{err}");
            assert_eq!(err.exitcode(), Some(0), "{err}");
        }
    }
}

const DEATHS: [Death; 4] = [Death::Kill, Death::Abort, Death::Exit3, Death::Exit0];

#[test]
fn map_starmap_apply_in_order() {
    let pool = Pool::new(2).unwrap();
    assert_eq!(pool.processes(), 2);
    let squares = pool.map(entry!(square), 0..100u64).unwrap();
    assert_eq!(squares, (0..100u64).map(|x| x * x).collect::<Vec<_>>());
    for chunksize in [1, 3, 1000] {
        let got = pool
            .map_chunked(entry!(square), 0..50u64, chunksize)
            .unwrap();
        assert_eq!(got, (0..50u64).map(|x| x * x).collect::<Vec<_>>());
    }
    assert!(pool.map(entry!(square), Vec::new()).unwrap().is_empty());
    let sums = pool
        .starmap(entry!(add), vec![(1, 2), (3, 4), (5, 6)])
        .unwrap();
    assert_eq!(sums, [3, 7, 11]);
    let sums = pool
        .starmap_chunked(entry!(add), (0..20).map(|i| (i, 1)), 7)
        .unwrap();
    assert_eq!(sums, (1..21).collect::<Vec<u64>>());
    assert_eq!(pool.apply(entry!(add), (40, 2)).unwrap(), 42);
    let r = pool.apply_async(entry!(add), (1, 1)).unwrap();
    r.wait();
    assert!(r.ready());
    assert_eq!(r.get().unwrap(), 2);
    pool.close();
    pool.join().unwrap();
}

/// Python's idiom `it = pool.imap(f, xs); pool.close(); for r in it: …;
/// pool.join()`: an `imap` made before `close` still runs all its input
/// (more than one window of it), while calls after `close` are refused at
/// once, even with nothing to run.
#[test]
fn imap_made_before_close_runs_all_its_input() {
    let pool = Pool::new(2).unwrap();
    let ordered = pool.imap(entry!(square), 0..2000u64).unwrap();
    let unordered = pool.imap_unordered(entry!(square), 0..2000u64).unwrap();
    pool.close();
    let got = ordered.collect::<multiproc::Result<Vec<u64>>>().unwrap();
    assert_eq!(got, (0..2000u64).map(|x| x * x).collect::<Vec<_>>());
    let mut got = unordered.collect::<multiproc::Result<Vec<u64>>>().unwrap();
    got.sort_unstable();
    assert_eq!(got, (0..2000u64).map(|x| x * x).collect::<Vec<_>>());

    let refused = [
        pool.map(entry!(square), Vec::new()).map(drop),
        pool.imap(entry!(square), Vec::new()).map(drop),
        pool.imap(entry!(square), 0..3u64).map(drop),
        pool.apply_async(entry!(square), (1,)).map(drop),
    ];
    for err in refused {
        let err = err.unwrap_err();
        assert!(err.to_string().contains("closed"), "{err}");
    }
    pool.join().unwrap();
}

#[test]
fn work_is_spread_over_the_workers() {
    let pool = Pool::new(2).unwrap();
    let parent = std::process::id();
    let pids: BTreeSet<u32> = pool
        .map_chunked(entry!(pid_of), 0..200u64, 1)
        .unwrap()
        .into_iter()
        .collect();
    assert!(!pids.contains(&parent));
    assert!(!pids.is_empty() && pids.len() <= 2, "{pids:?}");
}

#[test]
fn zero_processes_is_an_error() {
    // Python's `ValueError`s: the caller's mistake, not a failed spawn or I/O.
    let err = Pool::new(0).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    let err = Pool::builder()
        .processes(1)
        .max_tasks_per_child(0)
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    let pool = Pool::new(1).unwrap();
    let err = pool.join().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
}

#[test]
fn a_panicking_task_fails_only_itself() {
    let pool = Pool::new(2).unwrap();
    let err = pool
        .starmap(entry!(panics_at), (0..20).map(|x| (x, 13)))
        .unwrap_err();
    assert!(err.is_panicked(), "{err}");
    let text = err.to_string();
    assert!(text.contains("item 13 is bad"), "{text}");
    assert!(text.contains("item 13 of `pool::panics_at`"), "{text}");

    let results: Vec<_> = pool
        .imap(entry!(square), 0..5u64)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(results, [0, 1, 4, 9, 16]);
    let r = pool.apply_async(entry!(panics_at), (4, 4)).unwrap();
    let err = r.get().unwrap_err();
    assert!(
        err.is_panicked() && err.to_string().contains("item 4 is bad"),
        "{err}"
    );
    // The same worker processes carry on.
    assert_eq!(pool.map(entry!(square), [3u64]).unwrap(), [9]);
}

#[test]
fn a_dying_worker_fails_its_task_with_the_reason_and_is_replaced() {
    let pool = Pool::new(2).unwrap();
    for round in 0..2 {
        for how in DEATHS {
            let bad = 5 + round;
            // imap: one error, at the item, results in order.
            let results: Vec<_> = pool.starmap_imap_helper(bad, how).into_iter().collect();
            assert_eq!(results.len(), 20);
            for (i, result) in results.iter().enumerate() {
                match result {
                    Ok(v) => {
                        assert_ne!(i as u64, bad);
                        assert_eq!(*v, i as u64 * 10);
                    }
                    Err(e) => {
                        assert_eq!(i as u64, bad, "{e}");
                        expect_death(e, how);
                        assert!(e.to_string().contains("`pool::dies_at`"), "{e}");
                    }
                }
            }
            assert!(results[bad as usize].is_err());

            // map: the first error is the dead item's.
            let err = pool
                .starmap_chunked(entry!(dies_at), (0..20).map(|x| (x, bad, how)), 1)
                .unwrap_err();
            expect_death(&err, how);
            assert!(err.to_string().contains(&format!("item {bad} of")), "{err}");

            // apply_async: only the one.
            let pending: Vec<_> = (0..6)
                .map(|x| {
                    pool.apply_async(entry!(dies_at), (x, bad % 6, how))
                        .unwrap()
                })
                .collect();
            for (x, r) in pending.into_iter().enumerate() {
                match r.get() {
                    Ok(v) => assert_eq!(v, x as u64 * 10),
                    Err(e) => {
                        assert_eq!(x as u64, bad % 6, "{e}");
                        expect_death(&e, how);
                    }
                }
            }
            // And the pool keeps serving.
            let squares = pool.map(entry!(square), 0..10u64).unwrap();
            assert_eq!(squares, (0..10u64).map(|x| x * x).collect::<Vec<_>>());
        }
    }
    pool.close();
    pool.join().unwrap();
}

trait Helper {
    fn starmap_imap_helper(&self, bad: u64, how: Death) -> Vec<multiproc::Result<u64>>;
}

impl Helper for Pool {
    /// imap over `dies_at` needs one-argument entries; go through apply_async
    /// for the tuple instead, collecting in order as imap would.
    fn starmap_imap_helper(&self, bad: u64, how: Death) -> Vec<multiproc::Result<u64>> {
        let pending: Vec<_> = (0..20)
            .map(|x| self.apply_async(entry!(dies_at), (x, bad, how)).unwrap())
            .collect();
        pending.into_iter().map(|r| r.get()).collect()
    }
}

#[process_entry]
fn kill_on_seven(x: u64) -> u64 {
    if x == 7 {
        let me = rustix::process::getpid();
        rustix::process::kill_process(me, rustix::process::Signal::KILL).unwrap();
    }
    x + 1
}

#[test]
fn imap_survives_a_killed_worker_in_order() {
    let pool = Pool::new(2).unwrap();
    for _ in 0..3 {
        let results: Vec<_> = pool
            .imap(entry!(kill_on_seven), 0..30u64)
            .unwrap()
            .collect();
        assert_eq!(results.len(), 30);
        for (i, r) in results.into_iter().enumerate() {
            if i == 7 {
                let e = r.unwrap_err();
                assert!(e.is_signaled() && e.exitcode() == Some(-9), "{e}");
            } else {
                assert_eq!(r.unwrap(), i as u64 + 1);
            }
        }
        let mut unordered: Vec<_> = pool
            .imap_unordered(entry!(kill_on_seven), 0..30u64)
            .unwrap()
            .filter_map(Result::ok)
            .collect();
        unordered.sort_unstable();
        let expected: Vec<u64> = (0..30).filter(|&i| i != 7).map(|i| i + 1).collect();
        assert_eq!(unordered, expected);
    }
}

#[test]
fn a_dead_worker_fails_its_whole_chunk_only() {
    let pool = Pool::new(2).unwrap();
    let results: Vec<_> = pool
        .imap_chunked(entry!(kill_on_seven), 0..20u64, 4)
        .unwrap()
        .collect();
    for (i, r) in results.into_iter().enumerate() {
        if (4..8).contains(&i) {
            let e = r.unwrap_err();
            assert!(e.is_signaled(), "{e}");
            assert!(e.to_string().contains(&format!("item {i} of")), "{e}");
        } else {
            assert_eq!(r.unwrap(), i as u64 + 1);
        }
    }
}

#[test]
fn map_chunks_as_python_does_by_default() {
    // ceil(10 / (4 × 2)) = 2 items a chunk: the worker killed at item 7
    // takes item 6, of its chunk, with it (a floor would make chunks of 1).
    let pool = Pool::new(2).unwrap();
    let err = pool.map(entry!(kill_on_seven), 0..10u64).unwrap_err();
    assert!(err.is_signaled(), "{err}");
    assert!(err.to_string().contains("item 6 of"), "{err}");
    // The error names the first item, which may not be the one that ended
    // the worker: it says which items went with it.
    assert!(
        err.to_string()
            .contains("its worker held items 6 to 7 together"),
        "{err}"
    );
    // 33 items: chunks of 5, so the chunk that dies is items 5 to 9.
    let err = pool.map(entry!(kill_on_seven), 0..33u64).unwrap_err();
    assert!(err.to_string().contains("item 5 of"), "{err}");
    assert!(
        err.to_string()
            .contains("its worker held items 5 to 9 together"),
        "{err}"
    );
    // A chunk of one item names no others.
    let err = pool
        .map_chunked(entry!(kill_on_seven), 0..10u64, 1)
        .unwrap_err();
    assert!(err.to_string().contains("item 7 of"), "{err}");
    assert!(!err.to_string().contains("held items"), "{err}");
}

#[test]
fn imap_takes_input_lazily() {
    let pool = Pool::new(2).unwrap();
    let pulled = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&pulled);
    // Long enough that taking it all shows, short enough to end if it did.
    let input = (0..1_000_000u64).inspect(move |_| {
        counter.fetch_add(1, Ordering::Relaxed);
    });
    let first: Vec<u64> = pool
        .imap(entry!(square), input)
        .unwrap()
        .take(100)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(first, (0..100u64).map(|x| x * x).collect::<Vec<_>>());
    // At most a window (64 chunks per worker) beyond what was yielded.
    let pulled = pulled.load(Ordering::Relaxed);
    assert!(
        pulled <= 100 + 64 * 2,
        "took {pulled} items for 100 results"
    );
    // The endless one from the API contract.
    let n = pool.imap(entry!(square), 0..).unwrap().take(10).count();
    assert_eq!(n, 10);
}

#[test]
fn imap_unordered_yields_everything() {
    let pool = Pool::new(2).unwrap();
    let mut got: Vec<u64> = pool
        .imap_unordered(entry!(square), 0..100u64)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    got.sort_unstable();
    assert_eq!(got, (0..100u64).map(|x| x * x).collect::<Vec<_>>());
}

#[test]
fn max_tasks_per_child_recycles_workers() {
    let pool = Pool::builder()
        .processes(1)
        .max_tasks_per_child(2)
        .build()
        .unwrap();
    let pids = pool.map_chunked(entry!(pid_of), 0..6u64, 1).unwrap();
    let mut counts: HashMap<u32, usize> = HashMap::new();
    for p in &pids {
        *counts.entry(*p).or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "{pids:?}");
    assert!(counts.values().all(|&n| n == 2), "{pids:?}");
}

#[test]
fn the_initializer_runs_in_every_worker_and_every_replacement() {
    let counter = Value::new(0u64).unwrap();
    let pool = Pool::builder()
        .processes(2)
        .initializer(entry!(init_counting), (counter.clone(), 77))
        .build()
        .unwrap();
    assert_eq!(counter.load(), 2);
    let marks = pool.map_chunked(entry!(init_mark), 0..20u64, 1).unwrap();
    assert!(marks.iter().all(|&m| m == 77), "{marks:?}");
    drop(pool);

    // One worker: what follows a kill runs on the replacement.
    let counter = Value::new(0u64).unwrap();
    let pool = Pool::builder()
        .processes(1)
        .initializer(entry!(init_counting), (counter.clone(), 78))
        .build()
        .unwrap();
    for round in 1..=2 {
        let _ = pool.map_chunked(entry!(kill_on_seven), 0..10u64, 1);
        let marks = pool.map_chunked(entry!(init_mark), 0..20u64, 1).unwrap();
        assert!(marks.iter().all(|&m| m == 78), "{marks:?}");
        assert_eq!(counter.load(), 1 + round);
    }
}

#[test]
fn a_failing_initializer_fails_build() {
    let err = Pool::builder()
        .processes(2)
        .initializer(entry!(init_panics), ())
        .build()
        .unwrap_err();
    assert!(err.is_panicked(), "{err}");
    assert!(err.to_string().contains("no setup today"), "{err}");
}

#[process_entry]
fn init_refuses_while(refuse: Event) {
    if refuse.is_set() {
        std::process::exit(3);
    }
}

/// A slot whose replacement could not start (an initializer failing for a
/// while, or no descriptors left for a while) tries again for the next job,
/// rather than leaving the pool without workers for good.
#[test]
fn a_pool_that_could_not_start_workers_tries_again_for_the_next_job() {
    for method in common::start_methods() {
        let refuse = Event::new().unwrap();
        let pool = Pool::builder()
            .processes(1)
            .max_tasks_per_child(1)
            .start_method(method)
            .initializer(entry!(init_refuses_while), (refuse.clone(),))
            .build()
            .unwrap();
        refuse.set();
        // Runs on the first worker, which then retires; its replacements
        // exit in their initializer.
        assert_eq!(pool.apply(entry!(square), (2,)).unwrap(), 4);
        let err = pool.apply(entry!(square), (3,)).unwrap_err();
        assert!(err.is_spawn(), "{method:?}: {err}");
        assert!(err.to_string().contains("no workers left"), "{err}");
        refuse.clear();
        assert_eq!(pool.apply(entry!(square), (4,)).unwrap(), 16, "{method:?}");
        assert_eq!(pool.map(entry!(square), 0..4u64).unwrap(), [0, 1, 4, 9]);
        pool.close();
        pool.join().unwrap();
    }
}

#[test]
fn handles_travel_as_task_arguments() {
    let pool = Pool::new(2).unwrap();
    let q = Queue::new().unwrap();
    pool.starmap(entry!(put_into), (0..10).map(|x| (q.clone(), x)))
        .unwrap();
    let mut got: Vec<u64> = (0..10).map(|_| q.get().unwrap()).collect();
    got.sort_unstable();
    assert_eq!(got, (0..10).map(|x| x * 2).collect::<Vec<_>>());

    let (mut mine, theirs) = UnixStream::pair().unwrap();
    pool.apply(
        entry!(write_to),
        (Fd::from(std::os::fd::OwnedFd::from(theirs)), "hi".into()),
    )
    .unwrap();
    let mut text = [0u8; 2];
    mine.read_exact(&mut text).unwrap();
    assert_eq!(&text, b"hi");
}

#[test]
fn get_timeout_gives_up_without_wedging_the_pool() {
    let pool = Pool::new(2).unwrap();
    let event = Event::new().unwrap();
    let slow = pool
        .apply_async(entry!(wait_for), (event.clone(),))
        .unwrap();
    let err = slow.get_timeout(Duration::from_millis(50)).unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(!slow.ready());
    // The other worker serves meanwhile (each answer within a bound, so a
    // task stuck behind the slow one fails rather than hangs).
    for x in 0..20u64 {
        let quick = pool.apply_async(entry!(square), (x,)).unwrap();
        assert_eq!(quick.get_timeout(common::BOUND).unwrap(), x * x);
    }
    event.set();
    assert_eq!(slow.get_timeout(Duration::from_secs(60)).unwrap(), 7);
}

#[process_entry]
fn square_when_set(event: Event, x: u64) -> u64 {
    event.wait();
    x * x
}

/// `map_async`/`starmap_async` return before their tasks finish (which
/// wait for an event set only afterwards), and `get` gives every result
/// in input order.
#[test]
fn map_async_returns_at_once_and_gets_results_in_order() {
    let pool = Pool::new(2).unwrap();
    let event = Event::new().unwrap();
    let args: Vec<(Event, u64)> = (0..20u64).map(|x| (event.clone(), x)).collect();
    let pending = pool.starmap_async(entry!(square_when_set), args).unwrap();
    assert!(!pending.ready());
    assert_eq!(pending.successful(), None);
    let err = pending.get_timeout(Duration::from_millis(50)).unwrap_err();
    assert!(err.is_timeout(), "{err}");
    event.set();
    assert!(pending.wait_timeout(common::BOUND));
    assert_eq!(pending.successful(), Some(true));
    let expected: Vec<u64> = (0..20u64).map(|x| x * x).collect();
    assert_eq!(pending.get_timeout(common::BOUND).unwrap(), expected);
    let err = pending.get_timeout(common::BOUND).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyTaken, "{err}");

    let squares = pool.map_async(entry!(square), 0..100u64).unwrap();
    assert!(squares.wait_timeout(common::BOUND));
    assert!(squares.ready());
    let expected: Vec<u64> = (0..100u64).map(|x| x * x).collect();
    assert_eq!(squares.get().unwrap(), expected);

    let empty = pool.map_async(entry!(square), Vec::<u64>::new()).unwrap();
    assert_eq!(empty.get().unwrap(), Vec::<u64>::new());
}

#[process_entry]
fn count_then_fail_at(counter: Value<u64>, x: u64, bad: u64) -> u64 {
    *counter.lock().unwrap() += 1;
    if x > 0 && x.is_multiple_of(bad) {
        panic!("item {x} is bad");
    }
    x
}

/// A failing item does not stop the others (Python's `map_async` runs
/// them all); `get` reports the first failure in input order.
#[test]
fn map_async_runs_every_item_and_reports_the_first_failure() {
    let pool = Pool::new(2).unwrap();
    let counter = Value::new(0u64).unwrap();
    let args: Vec<(Value<u64>, u64, u64)> = (0..40u64).map(|x| (counter.clone(), x, 7)).collect();
    let pending = pool
        .starmap_async(entry!(count_then_fail_at), args)
        .unwrap();
    assert!(pending.wait_timeout(common::BOUND));
    assert_eq!(pending.successful(), Some(false));
    let err = pending.get_timeout(common::BOUND).unwrap_err();
    assert_eq!(pending.successful(), Some(false), "kept once taken");
    assert!(err.is_panicked(), "{err}");
    let text = err.to_string();
    assert!(text.contains("item 7 of"), "{text}");
    assert!(text.contains("item 7 is bad"), "{text}");
    assert_eq!(counter.load(), 40, "every item ran");

    pool.close();
    let err = pool.map_async(entry!(square), [1u64]).unwrap_err();
    assert!(err.is_disconnected(), "{err}");
    pool.join().unwrap();
}

#[process_entry]
fn bounce(tx: Connection<u8>) -> Connection<u8> {
    tx
}

/// A handle a task returns is not kept open in its worker once the
/// result is sent: when the parent drops the last end it holds, the
/// reader sees the end of the pipe while the worker lives on.
#[test]
fn a_returned_handle_is_not_kept_open_by_its_worker() {
    let pool = Pool::new(1).unwrap();
    let (rx, tx) = Pipe::<u8>::simplex().unwrap();
    let back = pool.apply(entry!(bounce), (tx,)).unwrap();
    back.send(&7).unwrap();
    drop(back);
    assert_eq!(rx.recv_timeout(common::BOUND).unwrap(), 7);
    match rx.recv_timeout(common::BOUND) {
        Err(RecvTimeoutError::Disconnected) => {}
        other => panic!("the worker still holds the send end: {other:?}"),
    }
    // The worker is alive and serving.
    assert_eq!(pool.apply(entry!(square), (3,)).unwrap(), 9);
}

/// Python's `it = pool.imap(f, xs); it.next(timeout=1)`: a bounded wait
/// for the next result, which loses nothing when it gives up.
#[test]
fn imap_next_timeout_gives_up_and_the_result_still_comes() {
    let pool = Pool::new(2).unwrap();
    for ordered in [true, false] {
        let event = Event::new().unwrap();
        let mut it = if ordered {
            pool.imap(entry!(wait_for), [event.clone()]).unwrap()
        } else {
            pool.imap_unordered(entry!(wait_for), [event.clone()])
                .unwrap()
        };
        let err = it
            .next_timeout(Duration::from_millis(50))
            .expect("an item is pending")
            .unwrap_err();
        assert!(err.is_timeout(), "{err}");
        event.set();
        assert_eq!(
            it.next_timeout(Duration::from_secs(60)).unwrap().unwrap(),
            7
        );
        assert!(it.next_timeout(Duration::from_millis(1)).is_none());
        assert!(it.next().is_none());
    }
}

#[test]
fn terminate_fails_what_is_pending_and_reaps_the_workers() {
    let pool = Pool::new(2).unwrap();
    let pids: BTreeSet<u32> = pool
        .map_chunked(entry!(pid_of), 0..50u64, 1)
        .unwrap()
        .into_iter()
        .collect();
    let event = Event::new().unwrap();
    let stuck: Vec<_> = (0..3)
        .map(|_| {
            pool.apply_async(entry!(wait_for), (event.clone(),))
                .unwrap()
        })
        .collect();
    pool.terminate();
    for r in stuck {
        assert!(r.get().is_err());
    }
    assert!(pool.apply_async(entry!(square), (1,)).is_err());
    drop(pool);
    for p in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{p}")).exists(),
            "{p} lives"
        );
    }
}

#[test]
fn drop_reaps_every_worker() {
    let pool = Pool::new(2).unwrap();
    let pids: BTreeSet<u32> = pool
        .map_chunked(entry!(pid_of), 0..50u64, 1)
        .unwrap()
        .into_iter()
        .collect();
    let event = Event::new().unwrap();
    let _stuck = pool
        .apply_async(entry!(wait_for), (event.clone(),))
        .unwrap();
    drop(pool);
    for p in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{p}")).exists(),
            "{p} lives"
        );
    }
}

#[test]
fn close_then_join_lets_tasks_finish() {
    let pool = Pool::new(2).unwrap();
    assert!(pool.join().is_err(), "join before close");
    let pending: Vec<_> = (0..10)
        .map(|x| pool.apply_async(entry!(square), (x,)).unwrap())
        .collect();
    pool.close();
    assert!(pool.apply_async(entry!(square), (1,)).is_err());
    pool.join().unwrap();
    for (x, r) in pending.into_iter().enumerate() {
        assert!(r.ready());
        assert_eq!(r.get().unwrap(), (x * x) as u64);
    }
}

#[process_entry]
fn reverse(bytes: Vec<u8>) -> Vec<u8> {
    bytes.into_iter().rev().collect()
}

#[test]
fn large_arguments_and_results_go_through() {
    let pool = Pool::new(2).unwrap();
    let inputs: Vec<Vec<u8>> = (0..6u8)
        .map(|i| {
            (0..(512 << 10))
                .map(|j: u32| (j as u8).wrapping_add(i))
                .collect()
        })
        .collect();
    let outputs = pool
        .map_chunked(entry!(reverse), inputs.clone(), 1)
        .unwrap();
    for (input, output) in inputs.iter().zip(&outputs) {
        assert!(input.iter().rev().eq(output.iter()));
    }
}

#[test]
fn one_pool_serves_many_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Pool>();
    assert_send_sync::<multiproc::AsyncResult<u64>>();
    let pool = Pool::new(2).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let pool = &pool;
            s.spawn(move || {
                for round in 0..5 {
                    let base = t * 1000 + round * 100;
                    let got = pool
                        .map_chunked(entry!(square), base..base + 50, 3)
                        .unwrap();
                    assert_eq!(got, (base..base + 50).map(|x| x * x).collect::<Vec<_>>());
                }
            });
        }
    });
}

#[test]
fn a_worker_killed_from_outside_while_idle_is_replaced() {
    let pool = Pool::new(1).unwrap();
    for _ in 0..3 {
        let worker = pool.apply(entry!(pid), ()).unwrap();
        let pid = rustix::process::Pid::from_raw(worker as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
        // Served by the replacement (the dead one may still be seen as
        // alive for a moment: then its task fails with how it died).
        let mut served = None;
        for _ in 0..2 {
            match pool.apply(entry!(pid), ()) {
                Ok(p) => {
                    served = Some(p);
                    break;
                }
                Err(e) => assert!(e.is_signaled(), "{e}"),
            }
        }
        let served = served.expect("the replacement serves");
        assert_ne!(served, worker);
    }
}

#[process_entry]
fn report_then_wait(pids: Queue<u32>, event: Event) -> u32 {
    pids.put(std::process::id()).unwrap();
    event.wait();
    1
}

/// Python's `Pool` waits for ever here (cpython#96062: a worker killed by
/// the OOM killer in the middle of a task).
#[test]
fn a_worker_killed_from_outside_mid_task_fails_that_task() {
    let pool = Pool::new(2).unwrap();
    let (pids, event) = (Queue::new().unwrap(), Event::new().unwrap());
    for _ in 0..3 {
        let r = pool
            .apply_async(entry!(report_then_wait), (pids.clone(), event.clone()))
            .unwrap();
        let worker = pids.get().unwrap();
        let pid = rustix::process::Pid::from_raw(worker as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
        let err = r.get_timeout(Duration::from_secs(30)).unwrap_err();
        assert!(err.is_signaled(), "{err}");
        assert_eq!(err.exitcode(), Some(-9));
        assert!(err.to_string().contains(&format!("pid {worker}")), "{err}");
        assert_eq!(pool.map(entry!(square), 0..4u64).unwrap(), [0, 1, 4, 9]);
    }
}

#[test]
fn forked_workers_serve_and_are_replaced_when_they_die() {
    if !common::fork_server_or_skip() {
        return;
    }
    let pool = Pool::builder()
        .processes(2)
        .start_method(multiproc::StartMethod::ForkServer)
        .build()
        .unwrap();
    let squares: Vec<u64> = pool.map(entry!(square), 0..50u64).unwrap();
    assert_eq!(squares, (0..50u64).map(|x| x * x).collect::<Vec<_>>());
    // Forked by the server, not started by this process.
    let worker = pool.apply(entry!(pid), ()).unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{worker}/stat")).unwrap();
    let ppid: u32 = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(ppid, std::process::id(), "not a fork-server child");
    for how in DEATHS {
        let err = pool
            .starmap_chunked(entry!(dies_at), (0..20).map(|x| (x, 7, how)), 1)
            .unwrap_err();
        expect_death(&err, how);
    }
    // Replacements came up and serve.
    let again: Vec<u64> = pool.map(entry!(square), 0..10u64).unwrap();
    assert_eq!(again[9], 81);
}

/// Runs `f` on a thread of its own: `None` if it has not returned within
/// `bound` (the thread is then left behind: that is the hang).
fn within<T: Send + 'static>(bound: Duration, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(bound).ok()
}

/// A bound on a call that must not hang: generous, since it only turns a
/// hang into a failure.
const NO_HANG: Duration = Duration::from_secs(60);

/// Counts its runs and sends its pid; the first `ok` runs return, later
/// ones wait for ever on `never` (an event nobody sets).
#[process_entry]
fn init_hangs_after(runs: Value<u64>, pids: Queue<u32>, ok: u64, never: Event) {
    let run = {
        let mut runs = runs.lock().unwrap();
        *runs += 1;
        *runs
    };
    pids.put(std::process::id()).unwrap();
    if run > ok {
        never.wait();
    }
}

/// A pool of `processes` workers where one worker has died and its
/// replacement is stuck in its initializer; also that replacement's pid.
fn pool_with_a_hung_replacement(processes: u64) -> (Pool, u32) {
    let runs = Value::new(0u64).unwrap();
    let pids = Queue::new().unwrap();
    let never = Event::new().unwrap();
    let pool = Pool::builder()
        .processes(processes as usize)
        .initializer(
            entry!(init_hangs_after),
            (runs, pids.clone(), processes, never),
        )
        .build()
        .unwrap();
    let err = pool
        .apply(entry!(dies_at), (0, 0, Death::Exit3))
        .unwrap_err();
    expect_death(&err, Death::Exit3);
    let mut hung = 0;
    for _ in 0..=processes {
        hung = pids.get_timeout(common::BOUND).unwrap();
    }
    (pool, hung)
}

fn is_gone(pid: u32) -> bool {
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn terminate_returns_while_a_replacement_hangs_in_its_initializer() {
    let (pool, hung) = pool_with_a_hung_replacement(2);
    // The other worker still serves.
    assert_eq!(pool.apply(entry!(square), (4,)).unwrap(), 16);
    let pool = Arc::new(pool);
    let p = Arc::clone(&pool);
    assert!(
        within(NO_HANG, move || p.terminate()).is_some(),
        "terminate() hung on a replacement stuck in its initializer"
    );
    assert!(is_gone(hung), "the hung replacement {hung} was not reaped");
}

#[test]
fn drop_returns_while_a_replacement_hangs_in_its_initializer() {
    let (pool, hung) = pool_with_a_hung_replacement(1);
    assert!(
        within(NO_HANG, move || drop(pool)).is_some(),
        "dropping the pool hung on a replacement stuck in its initializer"
    );
    assert!(is_gone(hung), "the hung replacement {hung} was not reaped");
}

/// Nothing left to run, so the replacement's initializer is not waited
/// for (Python's `join` would wait for it for ever).
#[test]
fn join_returns_while_a_replacement_hangs_in_its_initializer() {
    let (pool, hung) = pool_with_a_hung_replacement(2);
    pool.close();
    let pool = Arc::new(pool);
    let p = Arc::clone(&pool);
    let joined = within(NO_HANG, move || p.join().map_err(|e| e.to_string()))
        .expect("close() and join() hung on a replacement stuck in its initializer");
    joined.unwrap();
    assert!(is_gone(hung), "the hung replacement {hung} was not reaped");
}

/// A task waits for the only worker to be ready (as in Python); when the
/// pool is terminated, it fails.
#[test]
fn a_task_waiting_for_a_hung_replacement_fails_when_the_pool_is_terminated() {
    let (pool, hung) = pool_with_a_hung_replacement(1);
    let pending = pool.apply_async(entry!(square), (5,)).unwrap();
    let pool = Arc::new(pool);
    let p = Arc::clone(&pool);
    let terminated = within(NO_HANG, move || p.terminate());
    let err = pending.get_timeout(common::BOUND).unwrap_err();
    assert!(err.is_disconnected(), "{err}");
    assert!(err.to_string().contains("terminated"), "{err}");
    assert!(terminated.is_some(), "terminate() hung");
    assert!(is_gone(hung), "the hung replacement {hung} was not reaped");
}

/// Forks a child that keeps every descriptor of the worker (its connection
/// to the pool among them) a little longer than the test's bound, then
/// exits with `code`.
#[process_entry]
fn fork_then_exit(code: i32) -> u64 {
    let linger = common::BOUND + Duration::from_secs(5);
    multiproc::__private::fork_lingering_child(linger).unwrap();
    std::process::exit(code)
}

/// The worker's exit is seen by itself, not by its connection's end, which
/// the forked child holds open.
#[test]
fn a_worker_that_forked_then_exited_fails_its_task_promptly() {
    let pool = Pool::new(1).unwrap();
    let pending = pool.apply_async(entry!(fork_then_exit), (5,)).unwrap();
    let err = pending.get_timeout(common::BOUND).unwrap_err();
    assert!(
        !err.is_timeout(),
        "the dead worker's task was still waited for: {err}"
    );
    assert!(err.is_exited(), "{err}");
    assert_eq!(err.exitcode(), Some(5), "{err}");
    assert!(err.to_string().contains("fork_then_exit"), "{err}");
    // Replaced, and the pool serves on.
    let pending = pool.apply_async(entry!(square), (6,)).unwrap();
    assert_eq!(pending.get_timeout(common::BOUND).unwrap(), 36);
}

#[process_entry]
fn make_event(x: u64) -> Event {
    let e = Event::new().unwrap();
    if x.is_multiple_of(2) {
        e.set();
    }
    e
}

/// More handles in one chunk's results than one message carries: they
/// come back in several messages, as a chunk's arguments go out.
#[test]
fn many_handle_results_in_one_chunk_come_back() {
    let pool = Pool::new(2).unwrap();
    // The default chunk size: 300 items, each result one handle.
    let events = pool.map(entry!(make_event), 0..2400u64).unwrap();
    assert_eq!(events.len(), 2400);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.is_set(), i.is_multiple_of(2), "item {i}");
    }
}

#[process_entry]
fn make_events(n: u64) -> Vec<Event> {
    (0..n).map(|_| Event::new().unwrap()).collect()
}

/// Results of many handles each come back, a message each if need be; one
/// with more than any message carries fails its item only, saying why.
#[test]
fn results_of_many_handles_each_come_back_or_say_why() {
    let pool = Pool::new(1).unwrap();
    let lens: Vec<usize> = pool
        .map_chunked(entry!(make_events), [220, 1, 220], 3)
        .unwrap()
        .iter()
        .map(Vec::len)
        .collect();
    assert_eq!(lens, [220, 1, 220]);
    let err = pool
        .map_chunked(entry!(make_events), [1, 300, 2], 3)
        .unwrap_err();
    assert!(err.is_encode(), "{err} ({:?})", err.kind());
    assert!(err.to_string().contains("item 1 of"), "{err}");
    assert!(err.to_string().contains("handles"), "{err}");
    let each: Vec<_> = [1, 300, 2]
        .into_iter()
        .map(|n| pool.apply_async(entry!(make_events), (n,)).unwrap())
        .map(|r| r.get_timeout(common::BOUND).map(|v| v.len()))
        .collect();
    assert_eq!(each[0].as_ref().unwrap(), &1);
    assert!(each[1].as_ref().unwrap_err().is_encode(), "{:?}", each[1]);
    assert_eq!(each[2].as_ref().unwrap(), &2);
}

#[process_entry]
fn len_of(s: String) -> usize {
    s.len()
}

/// Sends `signal` to process `pid`.
fn signal(pid: u32, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
    rustix::process::kill_process(pid, signal).unwrap();
}

/// Kills a stopped worker when dropped, unless disarmed: a failing test
/// must not leave it stopped, nor the pool's calls waiting for it.
struct KillOnFailure(Option<u32>);

impl Drop for KillOnFailure {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            signal(pid, rustix::process::Signal::KILL);
        }
    }
}

/// A pool of one worker, stopped (SIGSTOP), and a guard that kills it
/// should the test fail before disarming it.
fn pool_with_a_stopped_worker() -> (Arc<Pool>, u32, KillOnFailure) {
    let pool = Arc::new(Pool::new(1).unwrap());
    let worker = pool.apply(entry!(pid), ()).unwrap();
    signal(worker, rustix::process::Signal::STOP);
    let guard = KillOnFailure(Some(worker));
    common::eventually("the worker is stopped", || {
        common::state_of(worker) == Some(b'T')
    });
    (pool, worker, guard)
}

/// A worker that stops reading (its process stopped) holds up no call of
/// the pool: the pool never waits for a worker's socket while it holds its
/// bookkeeping, so `apply_async` of more than the socket and the lane hold
/// returns, and so does `terminate`, which kills the stopped worker and
/// fails the task.
#[test]
fn a_stopped_worker_holds_up_no_call_of_the_pool() {
    let (pool, worker, mut guard) = pool_with_a_stopped_worker();
    // Far more than the socket and the lane between the two hold.
    let p = Arc::clone(&pool);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let large = "x".repeat(64 << 20);
        let _ = tx.send(p.apply_async(entry!(len_of), (large,)));
    });
    let pending = rx
        .recv_timeout(common::BOUND)
        .expect("apply_async waited for a worker that does not read")
        .unwrap();
    let also = within(common::BOUND, {
        let p = Arc::clone(&pool);
        move || p.apply_async(entry!(square), (5,))
    })
    .expect("a second apply_async waited for a worker that does not read")
    .unwrap();
    let p = Arc::clone(&pool);
    assert!(
        within(common::BOUND, move || p.terminate()).is_some(),
        "terminate() waited for a worker that does not read"
    );
    guard.0 = None;
    // Killed though stopped, and reaped by the time terminate returned.
    assert!(
        is_gone(worker),
        "the stopped worker {worker} was not reaped"
    );
    for (what, err) in [
        (
            "the large task",
            pending.get_timeout(common::BOUND).unwrap_err(),
        ),
        (
            "the small task",
            also.get_timeout(common::BOUND).unwrap_err(),
        ),
    ] {
        assert!(err.is_disconnected(), "{what}: {err}");
        assert!(err.to_string().contains("terminated"), "{what}: {err}");
    }
}

/// What the pool sent a worker while it was stopped (a large task, then
/// small ones behind it) arrives whole and in order once it goes on: a
/// chunk answered out of turn would have the worker cut off.
#[test]
fn tasks_sent_to_a_stopped_worker_run_in_order_once_it_goes_on() {
    let (pool, worker, mut guard) = pool_with_a_stopped_worker();
    let p = Arc::clone(&pool);
    let (large, small) = within(common::BOUND, move || {
        let large = p
            .apply_async(entry!(len_of), ("x".repeat(16 << 20),))
            .unwrap();
        let small: Vec<_> = (0..5u64)
            .map(|x| (x, p.apply_async(entry!(square), (x,)).unwrap()))
            .collect();
        (large, small)
    })
    .expect("apply_async waited for a worker that does not read");
    signal(worker, rustix::process::Signal::CONT);
    assert_eq!(large.get_timeout(common::BOUND).unwrap(), 16 << 20);
    for (x, r) in small {
        assert_eq!(r.get_timeout(common::BOUND).unwrap(), x * x);
    }
    guard.0 = None;
    assert_eq!(pool.apply(entry!(pid), ()).unwrap(), worker);
}

/// A task that returns multiproc's own errors: `Err` for odd numbers.
#[process_entry]
fn even_only(x: u64) -> multiproc::Result<u64> {
    if x % 2 == 1 {
        // A real multiproc error, made in the worker.
        multiproc::Pool::new(0)?;
    }
    Ok(x / 2)
}

#[test]
fn a_task_returns_a_multiproc_result() {
    for method in common::start_methods() {
        let pool = Pool::builder()
            .processes(2)
            .start_method(method)
            .build()
            .unwrap();
        let local = Pool::new(0).unwrap_err();
        let got = pool.map(entry!(even_only), 0..6u64).unwrap();
        for (x, result) in (0..6u64).zip(got) {
            match result {
                Ok(half) => assert_eq!((x % 2, half), (0, x / 2), "{method:?}"),
                Err(err) => {
                    assert_eq!(x % 2, 1, "{method:?}: {err}");
                    assert_eq!(err.kind(), local.kind(), "{method:?}");
                    assert_eq!(err.is_spawn(), local.is_spawn(), "{method:?}");
                    assert_eq!(err.to_string(), local.to_string(), "{method:?}");
                }
            }
        }
        pool.close();
        pool.join().unwrap();
    }
}

/// Tries to start a child from inside a task: the kind of the error, if any.
#[process_entry]
fn start_a_child() -> Option<String> {
    multiproc::spawn!(pid)
        .and_then(|child| child.join())
        .err()
        .map(|e| format!("{:?}", e.kind()))
}

#[test]
fn a_task_cannot_start_processes_as_workers_are_daemons() {
    // As in Python: a worker is killed with the pool, so children of its
    // own would outlive it.
    let pool = Pool::new(1).unwrap();
    assert_eq!(
        pool.apply(entry!(start_a_child), ()).unwrap().as_deref(),
        Some("Spawn")
    );
}

/// The result of a `map_async` over no items is handed over once, as any
/// other's: asking again is an `AlreadyTaken` error, not a second empty
/// result.
#[test]
fn an_empty_map_async_hands_its_result_over_once() {
    let pool = Pool::new(1).unwrap();
    let pending = pool.map_async(entry!(square), Vec::<u64>::new()).unwrap();
    assert_eq!(
        pending.get_timeout(common::BOUND).unwrap(),
        Vec::<u64>::new()
    );
    assert_eq!(pending.successful(), Some(true));
    let again = pending.get_timeout(common::BOUND);
    assert_eq!(
        again.as_ref().map_err(|e| e.kind()),
        Err(ErrorKind::AlreadyTaken),
        "{again:?}"
    );
}
