//! Queue and JoinableQueue across real processes: MPMC, order, bounds,
//! close, large items, handles, and processes killed mid-operation.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use multiproc::{
    Connection, Event, JoinableQueue, Pipe, Queue, RecvError, RecvTimeoutError, SendTimeoutError,
    TryRecvError, TrySendError, process_entry, spawn,
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
    assert!(matches!(q.try_get(), Err(TryRecvError::Empty)));
    let start = Instant::now();
    assert!(matches!(
        q.get_timeout(Duration::from_millis(300)),
        Err(RecvTimeoutError::Timeout)
    ));
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
fn close_drains_then_disconnects_every_handle() {
    let q = Queue::<u32>::new().unwrap();
    let started = Event::new().unwrap();
    let child = spawn!(get_until_disconnected, q.clone(), started.clone()).unwrap();
    assert!(started.wait_timeout(Duration::from_secs(30)));
    q.put(1).unwrap();
    q.put(2).unwrap();
    q.close();
    assert!(q.is_closed());
    match q.put(3) {
        Err(e) => assert_eq!(e.into_inner(), 3),
        Ok(()) => panic!("put after close succeeded"),
    }
    // The child takes what is left, then sees the queue closed.
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
    q_in.close();
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
    q.close();
    assert_eq!(child.join().unwrap(), 5050);
}

#[test]
fn too_many_task_done_is_an_error() {
    let q = JoinableQueue::<u8>::new().unwrap();
    q.put(1).unwrap();
    q.get().unwrap();
    q.task_done().unwrap();
    assert!(q.task_done().is_err());
    assert!(q.join_timeout(Duration::ZERO).unwrap());
}
