//! Queue and JoinableQueue across real processes: MPMC, order, bounds,
//! close, large items, handles, and processes killed mid-operation.

mod common;

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use common::{HandleOrNumber, eventually, state_of, until_asleep, write_end_closed};
use std::time::{Duration, Instant};

use multiproc::{
    Connection, ErrorKind, Event, Fd, JoinableQueue, Pipe, Queue, RecvError, RecvTimeoutError,
    SendError, SendTimeoutError, TryRecvError, TrySendError, process_entry, spawn,
};

#[process_entry]
fn put_hello(q: Queue<(u32, String)>, n: u32) {
    q.put((n, "hello".to_string())).unwrap();
}

#[test]
fn three_children_each_put_one_item() {
    let q = Queue::new().unwrap();
    let children: Vec<_> = (0..3)
        .map(|n| spawn!(put_hello, q.clone(), n).unwrap())
        .collect();
    let mut got: Vec<_> = (0..3).map(|_| q.get().unwrap()).collect();
    got.sort();
    let want: Vec<_> = (0..3).map(|n| (n, "hello".to_string())).collect();
    assert_eq!(got, want);
    for child in children {
        child.join().unwrap();
    }
    assert!(q.is_empty());
}

#[process_entry]
fn produce(q: Queue<(u32, u32)>, producer: u32, n: u32) {
    for i in 0..n {
        q.put((producer, i)).unwrap();
    }
}

/// Takes items until it sees `stops` sentinels (`u32::MAX`), checking
/// that each producer's items arrive in order.
#[process_entry]
fn consume(q: Queue<(u32, u32)>) -> Vec<(u32, u32)> {
    let mut got = Vec::new();
    let mut last: std::collections::HashMap<u32, u32> = Default::default();
    loop {
        let (producer, i) = q.get().unwrap();
        if producer == u32::MAX {
            return got;
        }
        if let Some(prev) = last.insert(producer, i) {
            assert!(i > prev, "producer {producer}: {i} after {prev}");
        }
        got.push((producer, i));
    }
}

#[test]
fn one_producer_keeps_fifo_order() {
    let q = Queue::new().unwrap();
    let child = spawn!(produce, q.clone(), 0, 10_000).unwrap();
    for i in 0..10_000 {
        assert_eq!(q.get().unwrap(), (0, i));
    }
    child.join().unwrap();
}

#[test]
fn four_producers_four_consumers_lose_and_duplicate_nothing() {
    const PER_PRODUCER: u32 = 100_000;
    let q = Queue::bounded(10_000).unwrap();
    let consumers: Vec<_> = (0..4)
        .map(|_| spawn!(consume, q.clone()).unwrap())
        .collect();
    let producers: Vec<_> = (0..4)
        .map(|p| spawn!(produce, q.clone(), p, PER_PRODUCER).unwrap())
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    for _ in 0..4 {
        q.put((u32::MAX, 0)).unwrap();
    }
    let mut seen = HashSet::new();
    for c in consumers {
        for item in c.join().unwrap() {
            assert!(seen.insert(item), "duplicate {item:?}");
        }
    }
    assert_eq!(seen.len(), 4 * PER_PRODUCER as usize);
    assert!(q.is_empty());
}

/// (producer, index, bytes that depend on both): items large enough that
/// a put or a get holds the ring's lock for a while.
type Sized = (u32, u32, Vec<u8>);

fn sized_item(producer: u32, i: u32) -> Sized {
    (producer, i, vec![(producer * 31 + i) as u8; 20_000])
}

#[process_entry]
fn produce_sized(q: Queue<Sized>, producer: u32, n: u32) {
    for i in 0..n {
        q.put(sized_item(producer, i)).unwrap();
    }
}

/// Takes items with `try_get` until the queue is shut down and drained,
/// checking each is whole and each producer's arrive in order.
#[process_entry]
fn consume_trying(q: Queue<Sized>) -> Vec<(u32, u32)> {
    let mut got = Vec::new();
    let mut last: std::collections::HashMap<u32, u32> = Default::default();
    loop {
        let (producer, i, bytes) = match q.try_get() {
            Ok(item) => item,
            Err(TryRecvError::Empty) => {
                std::thread::yield_now();
                continue;
            }
            Err(TryRecvError::Disconnected) => return got,
            Err(e) => panic!("{e}"),
        };
        assert!(
            bytes == sized_item(producer, i).2,
            "item {producer}/{i} is torn"
        );
        if let Some(prev) = last.insert(producer, i) {
            assert!(i > prev, "producer {producer}: {i} after {prev}");
        }
        got.push((producer, i));
    }
}

#[test]
fn puts_and_gets_that_do_not_wait_never_break_the_ring_locks() {
    // An unbounded queue's put and a `try_get` try the ring's lock once: one
    // that finds it taken must leave it to its holder.
    const PER_PRODUCER: u32 = 2_000;
    let q = Queue::new().unwrap();
    let consumers: Vec<_> = (0..3)
        .map(|_| spawn!(consume_trying, q.clone()).unwrap())
        .collect();
    let producers: Vec<_> = (0..3)
        .map(|p| spawn!(produce_sized, q.clone(), p, PER_PRODUCER).unwrap())
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    q.shutdown();
    let mut seen = HashSet::new();
    for c in consumers {
        for item in c.join().unwrap() {
            assert!(seen.insert(item), "duplicate {item:?}");
        }
    }
    assert_eq!(seen.len(), 3 * PER_PRODUCER as usize, "items lost");
}

#[test]
fn bounded_queue_refuses_when_full() {
    let q = Queue::<u8>::bounded(2).unwrap();
    q.put(1).unwrap();
    q.try_put(2).unwrap();
    assert!(q.is_full());
    assert_eq!(q.len(), 2);
    match q.try_put(3) {
        Err(TrySendError::Full(3)) => {}
        other => panic!("expected Full(3), got {other:?}"),
    }
    let start = Instant::now();
    match q.put_timeout(4, Duration::from_millis(300)) {
        Err(SendTimeoutError::Timeout(4)) => {}
        other => panic!("expected Timeout(4), got {other:?}"),
    }
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited <= Duration::from_millis(800),
        "{waited:?}"
    );
    assert_eq!(q.get().unwrap(), 1);
    q.try_put(5).unwrap();
    assert_eq!(q.get().unwrap(), 2);
    assert_eq!(q.get().unwrap(), 5);
}

#[test]
fn get_timeout_returns_within_bounds() {
    let q = Queue::<u8>::new().unwrap();
    // The receive errors compare as crossbeam's do.
    assert_eq!(q.try_get(), Err(TryRecvError::Empty));
    let start = Instant::now();
    assert_eq!(
        q.get_timeout(Duration::from_millis(300)),
        Err(RecvTimeoutError::Timeout)
    );
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited <= Duration::from_millis(800),
        "{waited:?}"
    );
}

#[process_entry]
fn get_until_disconnected(q: Queue<u32>, started: Event) -> Vec<u32> {
    started.set();
    let mut got = Vec::new();
    loop {
        match q.get() {
            Ok(x) => got.push(x),
            Err(RecvError::Disconnected) => return got,
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn shutdown_drains_then_disconnects_every_handle() {
    let q = Queue::<u32>::new().unwrap();
    let started = Event::new().unwrap();
    let child = spawn!(get_until_disconnected, q.clone(), started.clone()).unwrap();
    assert!(started.wait_timeout(Duration::from_secs(30)));
    q.put(1).unwrap();
    q.put(2).unwrap();
    q.shutdown();
    assert!(q.is_shutdown() && q.is_closed());
    match q.put(3) {
        Err(e) => assert_eq!(e.into_inner(), 3),
        Ok(()) => panic!("put after shutdown succeeded"),
    }
    // The child takes what is left, then sees the queue shut down.
    let got = child.join().unwrap();
    assert!(got.len() <= 2);
    let mut rest = Vec::new();
    loop {
        match q.try_get() {
            Ok(x) => rest.push(x),
            Err(TryRecvError::Disconnected) => break,
            Err(e) => panic!("{e}"),
        }
    }
    let mut all: Vec<u32> = got.into_iter().chain(rest).collect();
    all.sort();
    assert_eq!(all, vec![1, 2]);
}

#[process_entry]
fn echo_big(q_in: Queue<Vec<u64>>, q_out: Queue<Vec<u64>>) {
    while let Ok(v) = q_in.get() {
        q_out.put(v).unwrap();
    }
}

#[test]
fn large_items_round_trip() {
    let q_in = Queue::new().unwrap();
    let q_out = Queue::new().unwrap();
    let child = spawn!(echo_big, q_in.clone(), q_out.clone()).unwrap();
    for size in [0usize, 1, 1000, 200_000, 1 << 20] {
        let v: Vec<u64> = (0..size as u64).collect();
        q_in.put(v.clone()).unwrap();
        assert_eq!(q_out.get_timeout(Duration::from_secs(60)).unwrap(), v);
    }
    q_in.shutdown();
    child.join().unwrap();
}

#[process_entry]
fn answer_over(q: Queue<Connection<u32>>) {
    let conn = q.get().unwrap();
    let x = conn.recv().unwrap();
    conn.send(&(x + 1)).unwrap();
}

#[test]
fn a_connection_travels_through_a_queue_to_a_running_process() {
    let q = Queue::new().unwrap();
    let child = spawn!(answer_over, q.clone()).unwrap();
    let (mine, theirs) = Pipe::<u32>::duplex().unwrap();
    q.put(theirs).unwrap();
    mine.send(&41).unwrap();
    assert_eq!(mine.recv().unwrap(), 42);
    child.join().unwrap();
}

#[process_entry]
fn sum_from_forwarded(control: Connection<Queue<u64>>) -> u64 {
    let q = control.recv().unwrap();
    (0..100).map(|_| q.get().unwrap()).sum()
}

#[test]
fn a_queue_travels_through_a_connection() {
    let (control, theirs) = Pipe::duplex().unwrap();
    let child = spawn!(sum_from_forwarded, theirs).unwrap();
    let q = Queue::new().unwrap();
    control.send(&q).unwrap();
    for i in 0..100 {
        q.put(i).unwrap();
    }
    assert_eq!(child.join().unwrap(), 4950);
}

#[process_entry]
fn hammer(q: Queue<Vec<u8>>, ready: Event) {
    ready.set();
    loop {
        let _ = q.put(vec![7; 100]);
        let _ = q.try_get();
    }
}

#[test]
fn processes_killed_mid_put_or_get_never_wedge_the_queue() {
    let q = Queue::<Vec<u8>>::new().unwrap();
    for round in 0..200 {
        let ready = Event::new().unwrap();
        let child = spawn!(hammer, q.clone(), ready.clone()).unwrap();
        assert!(ready.wait_timeout(Duration::from_secs(30)));
        child.kill().unwrap();
        assert!(child.join().unwrap_err().is_signaled());
        // The queue still works, promptly, for everyone else.
        q.put_timeout(vec![round as u8; 3], Duration::from_secs(10))
            .unwrap();
    }
    // Everything left is whole: the killed processes' items, and ours in order.
    let mut ours = Vec::new();
    while let Ok(item) = q.try_get() {
        if item.len() == 3 {
            assert!(item.iter().all(|&b| b == item[0]));
            ours.push(item[0]);
        } else {
            assert_eq!(item, vec![7; 100]);
        }
    }
    let mut sorted = ours.clone();
    sorted.sort();
    assert_eq!(ours, sorted, "our items keep their order");
    assert!(ours.len() <= 200);
}

#[process_entry]
fn work_through(q: JoinableQueue<u32>) -> u32 {
    let mut sum = 0;
    while let Ok(n) = q.get() {
        sum += n;
        q.task_done().unwrap();
    }
    sum
}

#[test]
fn joinable_queue_join_waits_for_every_task() {
    let q = JoinableQueue::new().unwrap();
    for n in 1..=100 {
        q.put(n).unwrap();
    }
    assert!(!q.join_timeout(Duration::from_millis(100)).unwrap());
    let child = spawn!(work_through, q.clone()).unwrap();
    q.join().unwrap();
    assert!(q.is_empty());
    q.shutdown();
    assert_eq!(child.join().unwrap(), 5050);
}

#[test]
fn too_many_task_done_is_an_error() {
    let q = JoinableQueue::<u8>::new().unwrap();
    q.put(1).unwrap();
    q.get().unwrap();
    q.task_done().unwrap();
    assert_eq!(
        q.task_done().unwrap_err().kind(),
        multiproc::ErrorKind::InvalidInput
    );
    assert_eq!(
        Queue::<u8>::bounded(0).unwrap_err().kind(),
        multiproc::ErrorKind::InvalidInput
    );
    assert!(q.join_timeout(Duration::ZERO).unwrap());
}

/// A size for item `i`: small, odd, page-sized and large ones mixed, so that
/// records end at every kind of offset and `PAD` records fall anywhere.
fn mixed_size(i: u32) -> usize {
    const SIZES: [usize; 10] = [0, 1, 5, 8, 13, 100, 1000, 4093, 40_000, 250_001];
    SIZES[i as usize % SIZES.len()] + (i as usize * 7919) % 3000
}

fn mixed_item(i: u32) -> (u32, String) {
    let c = char::from(b'a' + (i % 26) as u8);
    (i, c.to_string().repeat(mixed_size(i)))
}

fn check_mixed(i: u32, item: &(u32, String)) {
    assert_eq!(item.0, i, "items out of order");
    assert_eq!(item.1.len(), mixed_size(i), "item {i} has the wrong size");
    assert!(item.1 == mixed_item(i).1, "item {i} is damaged");
}

#[test]
fn a_full_ring_wraps_whole_items_of_mixed_sizes_over_many_laps() {
    // One process: fill the ring until it refuses, take some, fill again,
    // so that the ring stays full and wraps lap after lap. (Bounded far
    // beyond what the ring holds: an unbounded queue never refuses.)
    let q = Queue::<(u32, String)>::bounded(1 << 30).unwrap();
    let (mut put, mut got) = (0u32, 0u32);
    let mut bytes = 0usize;
    for _ in 0..30 {
        loop {
            match q.try_put(mixed_item(put)) {
                Ok(()) => {
                    bytes += mixed_size(put);
                    put += 1;
                }
                Err(TrySendError::Full(_)) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(q.len() > 10, "the ring is full with only {} items", q.len());
        for _ in 0..q.len() / 2 + 1 {
            check_mixed(got, &q.try_get().unwrap());
            got += 1;
        }
    }
    while got < put {
        check_mixed(got, &q.try_get().unwrap());
        got += 1;
    }
    assert!(matches!(q.try_get(), Err(TryRecvError::Empty)));
    assert!(bytes > 10 * (16 << 20), "only {bytes} bytes went through");
}

#[process_entry]
fn put_mixed(q: Queue<(u32, String)>, n: u32) {
    for i in 0..n {
        q.put(mixed_item(i)).unwrap();
    }
}

#[test]
fn a_producer_and_a_consumer_share_the_ring_over_many_laps() {
    // Concurrent: the child writes while we read, mostly from a full ring
    // (we start late and decode slowly), and sometimes from an empty one.
    const N: u32 = 6000;
    let q = Queue::<(u32, String)>::new().unwrap();
    let child = spawn!(put_mixed, q.clone(), N).unwrap();
    // Start late: once the putter sleeps, the ring is full (or it is done).
    eventually("the putter fills the ring", || {
        state_of(child.pid()) != Some(b'R') && !q.is_empty()
    });
    for i in 0..N {
        check_mixed(i, &q.get_timeout(Duration::from_secs(60)).unwrap());
    }
    child.join().unwrap();
    assert!(q.is_empty());
}

/// (producer, index, bytes that depend on both)
type Tagged = (u32, u32, Vec<u8>);

#[process_entry]
fn put_forever(q: Queue<Tagged>, producer: u32, ready: Event) {
    ready.set();
    for i in 0.. {
        let _ = q.put((producer, i, vec![producer as u8; 1 + i as usize % 300]));
    }
}

/// Takes items until the sentinel (`u32::MAX`), checking each is whole and
/// each producer's items arrive in order. Returns how many it took.
#[process_entry]
fn take_checking(q: Queue<Tagged>) -> u64 {
    let mut last: std::collections::HashMap<u32, u32> = Default::default();
    let mut taken = 0;
    loop {
        let (producer, i, bytes) = q.get().unwrap();
        if producer == u32::MAX {
            return taken;
        }
        assert_eq!(bytes, vec![producer as u8; 1 + i as usize % 300]);
        if let Some(prev) = last.insert(producer, i) {
            assert!(i > prev, "producer {producer}: {i} after {prev}");
        }
        taken += 1;
    }
}

#[test]
fn producers_killed_mid_put_leave_a_running_consumer_whole_items() {
    let q = Queue::bounded(1000).unwrap();
    let consumer = spawn!(take_checking, q.clone()).unwrap();
    for round in 0..40 {
        let ready = Event::new().unwrap();
        let producer = spawn!(put_forever, q.clone(), round, ready.clone()).unwrap();
        assert!(ready.wait_timeout(Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(round as u64 % 7));
        producer.kill().unwrap();
        assert!(producer.join().unwrap_err().is_signaled());
    }
    q.put_timeout((u32::MAX, 0, Vec::new()), Duration::from_secs(30))
        .unwrap();
    assert!(consumer.join().unwrap() > 0);
}

#[process_entry]
fn take_forever(q: Queue<Tagged>, ready: Event) {
    ready.set();
    loop {
        let _ = q.get();
    }
}

#[test]
fn consumers_killed_mid_get_leave_a_running_producer_going() {
    let q = Queue::bounded(1000).unwrap();
    let ready = Event::new().unwrap();
    let producer = spawn!(put_forever, q.clone(), 7, ready.clone()).unwrap();
    assert!(ready.wait_timeout(Duration::from_secs(30)));
    for _ in 0..40 {
        let ready = Event::new().unwrap();
        let consumer = spawn!(take_forever, q.clone(), ready.clone()).unwrap();
        assert!(ready.wait_timeout(Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(2));
        consumer.kill().unwrap();
        assert!(consumer.join().unwrap_err().is_signaled());
    }
    // The producer still gets its items through, whole and in order (less
    // those the killed consumers took).
    let mut last = None;
    for _ in 0..5000 {
        let (producer, i, bytes) = q.get_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(producer, 7);
        assert_eq!(bytes, vec![7; 1 + i as usize % 300]);
        assert!(last < Some(i), "{i} after {last:?}");
        last = Some(i);
    }
    producer.kill().unwrap();
    assert!(producer.join().unwrap_err().is_signaled());
}

#[process_entry]
fn put_into_full(q: Queue<u32>, started: Event) -> bool {
    started.set();
    q.put(2).is_err()
}

#[test]
fn shutdown_wakes_a_putter_blocked_on_a_full_queue() {
    let q = Queue::bounded(1).unwrap();
    q.put(1).unwrap();
    let started = Event::new().unwrap();
    let child = spawn!(put_into_full, q.clone(), started.clone()).unwrap();
    assert!(started.wait_timeout(Duration::from_secs(30)));
    // Past its spinning, asleep inside `put`.
    until_asleep("the putter sleeps on the full queue", child.pid());
    let closed = Instant::now();
    q.shutdown();
    assert!(
        child.join().unwrap(),
        "the blocked put succeeded after shutdown"
    );
    assert!(
        closed.elapsed() < Duration::from_secs(5),
        "{:?}",
        closed.elapsed()
    );
    assert_eq!(q.try_get().unwrap(), 1);
    assert_eq!(q.try_get(), Err(TryRecvError::Disconnected));
}

/// A file whose size says who made it.
fn sized_file(len: u64) -> Fd {
    let fd = rustix::fs::memfd_create("queue-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    let file = std::fs::File::from(fd);
    file.set_len(len).unwrap();
    Fd::from(file)
}

fn size_of(fd: Fd) -> u64 {
    fd.into_file().metadata().unwrap().len()
}

#[process_entry]
fn hammer_with_handles(q: Queue<(u32, Fd)>, ready: Event) {
    ready.set();
    loop {
        let _ = q.put((1000, sized_file(1000)));
        let _ = q.try_get();
    }
}

#[test]
fn processes_killed_mid_put_or_get_of_items_with_handles_cost_only_their_own_items() {
    const ROUNDS: u32 = 100;
    let q = Queue::<(u32, Fd)>::new().unwrap();
    for round in 0..ROUNDS {
        let ready = Event::new().unwrap();
        let child = spawn!(hammer_with_handles, q.clone(), ready.clone()).unwrap();
        assert!(ready.wait_timeout(Duration::from_secs(30)));
        child.kill().unwrap();
        assert!(child.join().unwrap_err().is_signaled());
        q.put_timeout(
            (round, sized_file(u64::from(round))),
            Duration::from_secs(10),
        )
        .unwrap();
    }
    // Every item comes with its own handle, except at most one per killed
    // getter (whose side message it had taken); ours (those the children did
    // not take) keep their order.
    let (mut lost, mut ours) = (0, Vec::new());
    loop {
        match q.try_get() {
            Ok((n, fd)) => {
                assert_eq!(
                    size_of(fd),
                    u64::from(n),
                    "an item came with another's handle"
                );
                if n < 1000 {
                    ours.push(n);
                }
            }
            Err(TryRecvError::Failed(_)) => lost += 1,
            Err(TryRecvError::Empty) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(lost <= ROUNDS, "{lost} items lost their handles");
    assert!(ours.is_sorted(), "our items keep their order");
}

#[process_entry]
fn put_a_handle_then_a_number(q: Queue<HandleOrNumber>, fd: Fd) {
    q.put(HandleOrNumber(Some(fd), 0)).unwrap();
    q.put(HandleOrNumber(None, 7)).unwrap();
}

#[test]
fn a_handle_where_none_is_expected_is_a_decode_error_and_is_closed() {
    let q = Queue::<HandleOrNumber>::new().unwrap();
    let (r, w) = std::io::pipe().unwrap();
    let child = spawn!(
        put_a_handle_then_a_number,
        q.clone(),
        Fd::from(std::os::fd::OwnedFd::from(w))
    )
    .unwrap();
    child.join().unwrap();
    // The handle's index must not pass for the number expected there.
    match q.get_timeout(Duration::from_secs(20)) {
        Err(RecvTimeoutError::Failed(e)) => {
            assert!(e.is_decode() && e.to_string().contains("handle"), "{e}")
        }
        other => panic!("expected a decode failure, got {other:?}"),
    }
    assert!(matches!(q.try_get().unwrap(), HandleOrNumber(None, 7)));
    // The refused item's handle was closed, not kept.
    assert!(
        write_end_closed(&r.into()),
        "the refused handle was kept open"
    );
}

#[test]
fn a_put_keeps_no_copy_of_the_items_handles() {
    let q = Queue::<Connection<u8>>::new().unwrap();
    let (mine, theirs) = Pipe::<u8>::duplex().unwrap();
    q.put(theirs).unwrap();
    drop(q.get().unwrap());
    // The only other copy was the one in the queue: the peer is gone now.
    match mine.recv_timeout(Duration::from_secs(10)) {
        Err(RecvTimeoutError::Disconnected) => {}
        other => panic!("expected Disconnected, got {other:?}"),
    }
}

#[process_entry]
fn put_then_close(q: Queue<u32>, first: u32, n: u32) -> bool {
    for i in first..first + n {
        q.put(i).unwrap();
    }
    q.close();
    // This handle puts no more; the queue itself stays open.
    q.put(u32::MAX).is_err() && !q.is_shutdown()
}

#[test]
fn close_ends_only_this_handles_puts() {
    // Python's pattern: each producer closes its handle when done. Every
    // item of every producer arrives, and the queue stays usable.
    let q = Queue::<u32>::new().unwrap();
    let producers: Vec<_> = (0..2)
        .map(|p| spawn!(put_then_close, q.clone(), p * 100, 10).unwrap())
        .collect();
    for producer in producers {
        assert!(producer.join().unwrap(), "a closed handle still put");
    }
    let mut got: Vec<u32> = (0..20).map(|_| q.try_get().unwrap()).collect();
    got.sort_unstable();
    let want: Vec<u32> = (0..10).chain(100..110).collect();
    assert_eq!(got, want);
    assert!(
        matches!(q.try_get(), Err(TryRecvError::Empty)),
        "not shut down"
    );
    q.put(7).unwrap();
    assert_eq!(q.get().unwrap(), 7);
}

#[test]
fn an_unbounded_queue_never_makes_a_put_wait() {
    // More small items than the ring holds, with no consumer yet: every put
    // returns at once (the rest waits in this process), then all arrive in
    // order.
    const N: u32 = 3_000_000;
    let q = Queue::<u32>::new().unwrap();
    for i in 0..N {
        q.try_put(i).unwrap();
    }
    for i in 0..N {
        assert_eq!(q.get_timeout(Duration::from_secs(60)).unwrap(), i);
    }
    assert!(q.is_empty());
}

#[process_entry]
fn put_large_then_exit(q: Queue<(u32, String)>, n: u32, len: usize, all_put: Event) -> u32 {
    for i in 0..n {
        q.try_put((i, "x".repeat(len))).unwrap();
    }
    // Every put has returned, though nobody has taken anything: the items
    // wait in this process, which hands them over before it exits.
    all_put.set();
    n
}

#[test]
fn large_items_on_an_unbounded_queue_never_wait_and_outlive_their_putters_puts() {
    // Over 1 MiB, each goes through a memfd and the side socket, which holds
    // a few hundred: a putter with no consumer must still never wait.
    const N: u32 = 1_000;
    const LEN: usize = 1_536 << 10;
    let q = Queue::<(u32, String)>::new().unwrap();
    let all_put = Event::new().unwrap();
    let putter = spawn!(put_large_then_exit, q.clone(), N, LEN, all_put.clone()).unwrap();
    assert!(
        all_put.wait_timeout(Duration::from_secs(120)),
        "a put waited for a consumer"
    );
    for i in 0..N {
        let (n, text) = q.get_timeout(Duration::from_secs(60)).unwrap();
        assert_eq!(n, i);
        assert_eq!(text.len(), LEN);
    }
    assert_eq!(putter.join().unwrap(), N);
    assert!(q.is_empty());
}

#[process_entry]
fn overfill_then_return(q: Queue<Vec<u8>>, stderr: Fd, n: u32) {
    multiproc::__private::set_queue_exit_stall(Duration::from_millis(300));
    rustix::stdio::dup2_stderr(&stderr).unwrap();
    drop(stderr);
    for _ in 0..n {
        q.try_put(vec![7; 4096]).unwrap();
    }
}

#[test]
fn a_putter_gives_up_its_untaken_backlog_once_at_exit() {
    // More than the ring holds, and nobody gets: the child's exit flush
    // gives up after its (shortened) stall, says so once, and the child
    // exits. Its exit runs the flush twice (after the entry, then from
    // `exit`), and the second must not wait or speak again.
    let q = Queue::<Vec<u8>>::new().unwrap();
    let (mut said, stderr) = std::io::pipe().unwrap();
    let mut child = spawn!(overfill_then_return, q.clone(), Fd::new(stderr), 6_000).unwrap();
    let said = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut said, &mut text);
        text
    });
    let joined = child.join_timeout(Duration::from_secs(60));
    assert!(matches!(joined, Ok(Some(()))), "{joined:?}");
    let said = said.join().unwrap();
    assert_eq!(said.matches("never taken").count(), 1, "stderr: {said}");
    assert!(!q.is_empty());
}

#[process_entry]
fn overfill_joinable_then_return(q: JoinableQueue<Vec<u8>>, n: u32) {
    multiproc::__private::set_queue_exit_stall(Duration::from_millis(300));
    for _ in 0..n {
        q.try_put(vec![7; 4096]).unwrap();
    }
}

#[test]
fn items_a_putter_gave_up_at_exit_are_not_left_unfinished() {
    // The child's exit gives up on the items nobody made room for; they
    // are lost with it, so they must not stay counted, or `join` would
    // wait for them for ever.
    let q = JoinableQueue::<Vec<u8>>::new().unwrap();
    let mut child = spawn!(overfill_joinable_then_return, q.clone(), 6_000).unwrap();
    let joined = child.join_timeout(Duration::from_secs(60));
    assert!(matches!(joined, Ok(Some(()))), "{joined:?}");
    let mut got = 0;
    while q.try_get().is_ok() {
        q.task_done().unwrap();
        got += 1;
    }
    assert!(got > 0 && got < 6_000, "{got}");
    assert!(
        q.join_timeout(Duration::from_secs(10)).unwrap(),
        "items lost with the putter are still counted as unfinished"
    );
}

/// Puts `n` items on `q`, more than its ring holds (the rest wait in this
/// process's backlog), says so on `all_put`, and returns once `go` is set.
/// Nobody gets, so its exit flush then gives up on the backlog.
#[process_entry]
fn overfill_joinable_until(q: JoinableQueue<String>, n: u32, all_put: Event, go: Event) {
    for _ in 0..n {
        q.try_put("x".repeat(4096)).unwrap();
    }
    all_put.set();
    assert!(go.wait_timeout(common::BOUND), "go was never set");
    multiproc::__private::set_queue_exit_stall(Duration::ZERO);
}

const INNER: &str = "MULTIPROC_QUEUE_INNER";

#[test]
fn join_is_woken_when_items_lost_with_a_putter_are_uncounted() {
    // In its own process, whose futex waits it makes (nearly) endless.
    common::run_alone("inner_join_woken_by_uncount", INNER);
}

#[test]
#[ignore = "run by join_is_woken_when_items_lost_with_a_putter_are_uncounted"]
fn inner_join_woken_by_uncount() {
    if !common::run_by_outer_test(
        INNER,
        "join_is_woken_when_items_lost_with_a_putter_are_uncounted",
    ) {
        return;
    }
    const N: u32 = 6_000;
    let q = JoinableQueue::<String>::new().unwrap();
    let all_put = Event::new().unwrap();
    let go = Event::new().unwrap();
    let mut child = spawn!(
        overfill_joinable_until,
        q.clone(),
        N,
        all_put.clone(),
        go.clone()
    )
    .unwrap();
    assert!(all_put.wait_timeout(common::BOUND), "the child's puts");
    // The ring is full and nobody gets. Its items are marked done without
    // being taken, so that only the child's backlog is unfinished.
    let in_ring = q.len();
    assert!(in_ring > 0 && in_ring < N as usize, "{in_ring} in the ring");
    for _ in 0..in_ring {
        q.task_done().unwrap();
    }
    // From here on, a futex wait of this process ends only when woken: an
    // hour, not 50 ms, before it looks again on its own.
    multiproc::__private::set_futex_check_period(Duration::from_secs(3600));
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let (joined_tx, joined_rx) = std::sync::mpsc::channel();
    let joiner = q.clone();
    std::thread::spawn(move || {
        let _ = tid_tx.send(rustix::thread::gettid().as_raw_pid() as u32);
        let _ = joined_tx.send(joiner.join());
    });
    let tid = tid_rx.recv().unwrap();
    until_asleep("join waits for the child's backlog", tid);
    // The child returns; its exit flush gives up on the backlog and
    // uncounts it, which must wake the join.
    go.set();
    let joined = joined_rx.recv_timeout(common::BOUND);
    assert!(
        matches!(joined, Ok(Ok(()))),
        "join was not woken when the lost items were uncounted: {joined:?}"
    );
    let exited = child.join_timeout(common::BOUND);
    assert!(matches!(exited, Ok(Some(()))), "{exited:?}");
}

/// An item whose `Serialize` fails when `refuse` is set.
#[derive(Debug, PartialEq, serde::Deserialize)]
struct Picky {
    n: u32,
    refuse: bool,
}

impl serde::Serialize for Picky {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.refuse {
            return Err(serde::ser::Error::custom(format!(
                "Picky {} refuses",
                self.n
            )));
        }
        (self.n, self.refuse).serialize(s)
    }
}

#[process_entry]
fn put_refused_then_good(q: Queue<Picky>, bounded: Queue<Picky>) -> Vec<String> {
    let mut said = Vec::new();
    let refused = || Picky { n: 1, refuse: true };
    match q.put(refused()) {
        Err(SendError::Failed(item, e)) if item == refused() && e.kind() == ErrorKind::Encode => {
            said.push(format!("{}", SendError::Failed(item, e)))
        }
        other => said.push(format!("put: expected Failed, got {other:?}")),
    }
    match bounded.try_put(refused()) {
        Err(TrySendError::Failed(item, e)) if item == refused() => {
            said.push(format!("{}", TrySendError::Failed(item, e)))
        }
        other => said.push(format!("try_put: expected Failed, got {other:?}")),
    }
    match bounded.put_timeout(refused(), Duration::from_secs(5)) {
        Err(e @ SendTimeoutError::Failed(..)) => said.push(e.to_string()),
        other => said.push(format!("put_timeout: expected Failed, got {other:?}")),
    }
    // Neither queue is hurt.
    q.put(Picky {
        n: 2,
        refuse: false,
    })
    .unwrap();
    bounded
        .put(Picky {
            n: 3,
            refuse: false,
        })
        .unwrap();
    said
}

#[test]
fn an_item_whose_serialize_fails_is_handed_back_with_the_reason() {
    let q = Queue::<Picky>::new().unwrap();
    let bounded = Queue::<Picky>::bounded(4).unwrap();
    let child = spawn!(put_refused_then_good, q.clone(), bounded.clone()).unwrap();
    let timeout = Duration::from_secs(20);
    assert_eq!(
        q.get_timeout(timeout).unwrap(),
        Picky {
            n: 2,
            refuse: false
        }
    );
    assert_eq!(
        bounded.get_timeout(timeout).unwrap(),
        Picky {
            n: 3,
            refuse: false
        }
    );
    let said = child.join().unwrap();
    assert_eq!(said.len(), 3);
    // postcard's error does not keep serde's custom message.
    let reason = if cfg!(feature = "postcard") {
        "Serde Serialization Error"
    } else {
        "Picky 1 refuses"
    };
    for line in &said {
        assert!(
            line.starts_with("send failed: could not encode") && line.contains(reason),
            "{line}"
        );
    }
    // The same error, through `?`, as a connection's send gives.
    let err: multiproc::Error = q.put(Picky { n: 4, refuse: true }).unwrap_err().into();
    let (a, _b) = Pipe::<Picky>::duplex().unwrap();
    let sent = a.send(&Picky { n: 4, refuse: true }).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Encode);
    assert_eq!(err.to_string(), sent.to_string());
}

/// Bytes that differ between offsets and between items (`seed`), so that a
/// byte lost, moved or taken from another item shows.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((i.wrapping_mul(2_654_435_761) + u64::from(seed) * 40_503) >> 11) as u8)
        .collect()
}

/// Byte item sizes across the queue's paths: empty, small, odd, page-sized,
/// in the ring up to the largest item kept there (1 MiB), and beyond it,
/// through a memfd (a `Vec<u8>` item is its bytes: no length prefix).
const BYTE_SIZES: [usize; 9] = [
    0,
    1,
    7,
    4096,
    70_001,
    (1 << 20) - 1,
    1 << 20,
    (1 << 20) + 1,
    3 << 20,
];

/// Echoes items from `q_in` to `q_out` until `q_in` is shut down, taking
/// them with `get` and `get_timeout` in turn, and putting them back with
/// `put`, or (`try_put_too`) with `put` and `try_put` in turn.
fn echo_in_turns<T>(q_in: &Queue<T>, q_out: &Queue<T>, try_put_too: bool)
where
    T: Serialize + serde::de::DeserializeOwned + std::fmt::Debug + 'static,
{
    for turn in 0u32.. {
        let item = if turn % 2 == 0 {
            q_in.get().ok()
        } else {
            q_in.get_timeout(Duration::from_secs(60)).ok()
        };
        let Some(item) = item else { return };
        if try_put_too && turn % 2 == 1 {
            q_out.try_put(item).unwrap();
        } else {
            q_out.put(item).unwrap();
        }
    }
}

/// Echoes byte items back, taking them with `get` and `get_timeout` in
/// turn and putting them back with `put` and `try_put` in turn.
#[process_entry]
fn echo_bytes(q_in: Queue<Vec<u8>>, q_out: Queue<Vec<u8>>) {
    echo_in_turns(&q_in, &q_out, true);
}

#[test]
fn byte_items_round_trip_exactly_through_every_put_and_get() {
    // Bounded on the way there (a put may wait), unbounded on the way back
    // (a put never waits; `try_put` is never `Full`).
    let q_in = Queue::<Vec<u8>>::bounded(2).unwrap();
    let q_out = Queue::<Vec<u8>>::new().unwrap();
    let child = spawn!(echo_bytes, q_in.clone(), q_out.clone()).unwrap();
    let timeout = Duration::from_secs(60);
    for (i, &size) in BYTE_SIZES.iter().enumerate() {
        let item = pattern(size, i as u32);
        // The echo of the last item was taken: `q_in` is empty, so even
        // `try_put` finds room.
        match i % 3 {
            0 => q_in.put(item.clone()).unwrap(),
            1 => q_in.put_timeout(item.clone(), timeout).unwrap(),
            _ => q_in.try_put(item.clone()).unwrap(),
        }
        let back = q_out.get_timeout(timeout).unwrap();
        assert!(
            back == item,
            "item {i} ({size} bytes) came back as {} other bytes",
            back.len()
        );
    }
    assert_eq!(q_out.try_get(), Err(TryRecvError::Empty));
    q_in.shutdown();
    child.join().unwrap();
}

/// A message that carries bulk bytes between other fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Blob {
    id: u64,
    data: Vec<u8>,
    name: String,
}

#[process_entry]
fn echo_blobs(q_in: Queue<Blob>, q_out: Queue<Blob>) {
    echo_in_turns(&q_in, &q_out, false);
}

#[test]
fn messages_with_large_byte_fields_round_trip_exactly() {
    let q_in = Queue::<Blob>::bounded(2).unwrap();
    let q_out = Queue::<Blob>::new().unwrap();
    let child = spawn!(echo_blobs, q_in.clone(), q_out.clone()).unwrap();
    let timeout = Duration::from_secs(60);
    for (i, &size) in BYTE_SIZES.iter().enumerate() {
        let item = Blob {
            id: u64::MAX - i as u64,
            data: pattern(size, i as u32),
            name: format!("blob {i}"),
        };
        if i % 2 == 0 {
            q_in.put(item.clone()).unwrap();
        } else {
            q_in.try_put(item.clone()).unwrap();
        }
        let back = q_out.get_timeout(timeout).unwrap();
        assert!(back == item, "blob {i} ({size} bytes) came back changed");
    }
    q_in.shutdown();
    child.join().unwrap();
}

/// Takes `n` byte items and says which were not `pattern(1 MiB, i)`.
#[process_entry]
fn check_backlogged(q: Queue<Vec<u8>>, n: u32) -> Vec<u32> {
    (0..n)
        .filter(|&i| q.get_timeout(Duration::from_secs(60)).ok() != Some(pattern(1 << 20, i)))
        .collect()
}

#[test]
fn byte_items_that_wait_in_the_backlog_arrive_whole_and_in_order() {
    // 40 MiB of items on an unbounded queue, before anyone takes one: most
    // find the 16 MiB ring full and wait in this process's backlog.
    let q = Queue::<Vec<u8>>::new().unwrap();
    let n = 40;
    for i in 0..n {
        q.put(pattern(1 << 20, i)).unwrap();
    }
    assert!(q.len() < n as usize, "the ring took them all: no backlog");
    let child = spawn!(check_backlogged, q.clone(), n).unwrap();
    assert_eq!(child.join().unwrap(), Vec::<u32>::new());
}

/// Takes byte items until shut down, marking each done; says which were
/// not `pattern(BYTE_SIZES[i], i)`.
#[process_entry]
fn check_joinable_bytes(q: JoinableQueue<Vec<u8>>) -> Vec<usize> {
    let mut wrong = Vec::new();
    let mut i = 0;
    while let Ok(item) = q.get() {
        if item != pattern(BYTE_SIZES[i % BYTE_SIZES.len()], i as u32) {
            wrong.push(i);
        }
        i += 1;
        q.task_done().unwrap();
    }
    wrong
}

#[test]
fn a_joinable_queue_of_byte_items_delivers_them_whole() {
    let q = JoinableQueue::<Vec<u8>>::new().unwrap();
    let child = spawn!(check_joinable_bytes, q.clone()).unwrap();
    for (i, &size) in BYTE_SIZES.iter().enumerate() {
        q.put(pattern(size, i as u32)).unwrap();
    }
    assert!(q.join_timeout(Duration::from_secs(60)).unwrap());
    q.shutdown();
    assert_eq!(child.join().unwrap(), Vec::<usize>::new());
}

#[test]
fn a_byte_item_refused_is_handed_back_whole() {
    // Bounded and unbounded, with the ring full (an unbounded queue's item
    // then goes to the backlog as it is, not copied) and after a shutdown.
    let bounded = Queue::<Vec<u8>>::bounded(1).unwrap();
    bounded.put(vec![1]).unwrap();
    assert_eq!(
        bounded.try_put(pattern(5000, 1)),
        Err(TrySendError::Full(pattern(5000, 1)))
    );
    let q = Queue::<Vec<u8>>::new().unwrap();
    for i in 0..40 {
        q.put(pattern(1 << 20, i)).unwrap();
    }
    assert!(q.len() < 40, "the ring took them all: no backlog");
    for q in [&bounded, &q] {
        q.shutdown();
        match q.put(pattern(70_001, 2)) {
            Err(SendError::Disconnected(item)) => assert!(item == pattern(70_001, 2)),
            other => panic!(
                "expected Disconnected, got {:?}",
                other.map_err(|e| e.to_string())
            ),
        }
    }
    // What the ring held is still there, whole and in order.
    for i in 0..q.len() as u32 {
        assert!(q.try_get().unwrap() == pattern(1 << 20, i));
    }
}
