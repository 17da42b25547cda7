//! Process-shared synchronisation and shared memory, across real processes.
//!
//! Processes coordinate through Events, Semaphores and the primitives under
//! test; timeouts here only bound a failure, they never order anything.

mod common;

use std::time::{Duration, Instant};

use common::{BOUND, eventually, state_of};

use multiproc::{
    Array, Barrier, BoundedSemaphore, Condition, ErrorKind, Event, Lock, RLock, Semaphore,
    SharedMemory, TryLockError, Value, process_entry, spawn,
};

/// How far past its deadline a timed wait may return.
const SLACK: Duration = Duration::from_millis(500);

fn text(err: multiproc::Error) -> String {
    err.to_string()
}

fn assert_within(elapsed: Duration, deadline: Duration) {
    assert!(
        elapsed >= deadline && elapsed <= deadline + SLACK,
        "returned after {elapsed:?}, expected within [{deadline:?}, {:?}]",
        deadline + SLACK
    );
}

#[test]
fn every_handle_is_clone_send_sync_and_travels() {
    fn handle<T: Clone + Send + Sync + serde::Serialize + serde::de::DeserializeOwned>() {}
    handle::<Lock>();
    handle::<RLock>();
    handle::<Semaphore>();
    handle::<BoundedSemaphore>();
    handle::<Event>();
    handle::<Condition>();
    handle::<Barrier>();
    handle::<Value<u64>>();
    handle::<Array<f32>>();
    handle::<SharedMemory>();
}

// ---------------------------------------------------------------- Value

#[process_entry]
fn increment(total: Value<u64>, times: u64) -> Result<(), String> {
    for _ in 0..times {
        *total.lock().map_err(text)? += 1;
    }
    Ok(())
}

#[test]
fn value_increments_from_four_processes_are_exact() {
    let total = Value::new(0u64).unwrap();
    let children: Vec<_> = (0..4)
        .map(|_| spawn!(increment, total.clone(), 100_000).unwrap())
        .collect();
    for child in children {
        child.join().unwrap().unwrap();
    }
    assert_eq!(total.load(), 400_000);
}

#[process_entry]
fn make_value(start: i32) -> Value<i32> {
    Value::new(start).expect("value")
}

#[test]
fn a_value_created_in_a_child_is_shared_with_the_parent() {
    let value = spawn!(make_value, 41).unwrap().join().unwrap();
    *value.lock().unwrap() += 1;
    assert_eq!(value.load(), 42);
}

#[process_entry]
fn flip(flag: Value<bool>, letter: Value<char>) -> Result<(bool, char), String> {
    let was = {
        let mut flag = flag.lock().map_err(text)?;
        let was = *flag;
        *flag = !was;
        was
    };
    let old = letter.load();
    letter.store('é');
    Ok((was, old))
}

#[test]
fn bool_and_char_values_are_shared_across_processes() {
    let flag = Value::new(false).unwrap();
    let letter = Value::new('a').unwrap();
    let seen = spawn!(flip, flag.clone(), letter.clone())
        .unwrap()
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(seen, (false, 'a'));
    assert!(flag.load());
    assert_eq!(letter.load(), 'é');
    let seen = spawn!(flip, flag.clone(), letter.clone())
        .unwrap()
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(seen, (true, 'é'));
    assert!(!flag.load());
}

// ---------------------------------------------------- Array, SharedMemory

#[process_entry]
fn fill(numbers: Array<u32>, bytes: SharedMemory) -> Result<(), String> {
    for (i, n) in numbers.lock().map_err(text)?.iter_mut().enumerate() {
        *n = i as u32 * 10;
    }
    bytes
        .lock()
        .map_err(text)?
        .copy_from_slice(b"from the child");
    Ok(())
}

#[test]
fn array_and_shared_memory_written_by_a_child_are_seen_by_the_parent() {
    let numbers = Array::<u32>::new(5).unwrap();
    assert_eq!(numbers.to_vec().unwrap(), [0; 5]);
    let bytes = SharedMemory::new(14).unwrap();
    assert_eq!((bytes.size(), bytes.len()), (14, 14));
    spawn!(fill, numbers.clone(), bytes.clone())
        .unwrap()
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(numbers.to_vec().unwrap(), [0, 10, 20, 30, 40]);
    assert_eq!(bytes.lock().unwrap().as_slice(), b"from the child");
    let copy = Array::from_slice(&[1.5f64, 2.5]).unwrap();
    assert_eq!(*copy.lock().unwrap(), [1.5, 2.5]);
}

/// Flips each flag and upper-cases each letter, in place.
#[process_entry]
fn flip_all(flags: Array<bool>, letters: Array<char>) -> Result<(), String> {
    for flag in flags.lock().map_err(text)?.iter_mut() {
        *flag = !*flag;
    }
    for letter in letters.lock().map_err(text)?.iter_mut() {
        *letter = letter.to_ascii_uppercase();
    }
    Ok(())
}

#[test]
fn arrays_of_bool_and_char_cross_processes() {
    // Python's `Array(c_bool, 3)`: zero-filled, so all false.
    let flags = Array::<bool>::new(3).unwrap();
    assert_eq!(flags.to_vec().unwrap(), [false; 3]);
    flags.lock().unwrap()[1] = true;
    let letters = Array::from_slice(&['a', 'é', 'z']).unwrap();
    spawn!(flip_all, flags.clone(), letters.clone())
        .unwrap()
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(flags.to_vec().unwrap(), [true, false, true]);
    assert_eq!(*letters.lock().unwrap(), ['A', 'é', 'Z']);
}

// ------------------------------------------------------------ Condition

/// Ring buffer in an `Array<u64>`: head, tail, closed flag, then slots.
const HEAD: usize = 0;
const TAIL: usize = 1;
const CLOSED: usize = 2;
const SLOTS: usize = 3;
const CAPACITY: u64 = 4;
const ITEMS: u64 = 2000;

#[process_entry]
fn produce(cond: Condition, ring: Array<u64>) -> Result<(), String> {
    for item in 1..=ITEMS {
        let guard = cond.lock().map_err(text)?;
        let guard = cond.wait_while(guard, || {
            let r = ring.to_vec().unwrap_or_default();
            r[TAIL] - r[HEAD] == CAPACITY
        });
        {
            let mut r = ring.lock().map_err(text)?;
            let tail = r[TAIL];
            r[SLOTS + (tail % CAPACITY) as usize] = item;
            r[TAIL] = tail + 1;
        }
        cond.notify_all();
        drop(guard);
    }
    let _guard = cond.lock().map_err(text)?;
    ring.lock().map_err(text)?[CLOSED] = 1;
    cond.notify_all();
    Ok(())
}

#[process_entry]
fn consume(cond: Condition, ring: Array<u64>) -> Result<(u64, u64), String> {
    let (mut count, mut sum) = (0, 0);
    loop {
        let guard = cond.lock().map_err(text)?;
        let guard = cond.wait_while(guard, || {
            let r = ring.to_vec().unwrap_or_default();
            r[TAIL] == r[HEAD] && r[CLOSED] == 0
        });
        let mut r = ring.lock().map_err(text)?;
        if r[TAIL] == r[HEAD] {
            return Ok((count, sum));
        }
        let head = r[HEAD];
        sum += r[SLOTS + (head % CAPACITY) as usize];
        count += 1;
        r[HEAD] = head + 1;
        drop(r);
        cond.notify_all();
        drop(guard);
    }
}

#[test]
fn condition_hands_every_item_from_producer_to_consumers_once() {
    let cond = Condition::new().unwrap();
    let ring = Array::<u64>::new(SLOTS + CAPACITY as usize).unwrap();
    let consumers: Vec<_> = (0..2)
        .map(|_| spawn!(consume, cond.clone(), ring.clone()).unwrap())
        .collect();
    let producer = spawn!(produce, cond.clone(), ring.clone()).unwrap();
    producer.join().unwrap().unwrap();
    let (mut count, mut sum) = (0, 0);
    for consumer in consumers {
        let (c, s) = consumer.join().unwrap().unwrap();
        count += c;
        sum += s;
    }
    assert_eq!(count, ITEMS);
    assert_eq!(sum, ITEMS * (ITEMS + 1) / 2);
}

#[process_entry]
fn wait_once(cond: Condition, ready: Value<u32>, announce: Condition) -> Result<bool, String> {
    let guard = cond.lock().map_err(text)?;
    *ready.lock().map_err(text)? += 1;
    {
        let _announce = announce.lock().map_err(text)?;
        announce.notify_all();
    }
    let (_guard, timed_out) = cond.wait_timeout(guard, Duration::from_secs(2));
    Ok(!timed_out)
}

#[test]
fn condition_notify_wakes_at_most_n_waiters() {
    let cond = Condition::new().unwrap();
    let announce = Condition::new().unwrap();
    let ready = Value::new(0u32).unwrap();
    let waiters: Vec<_> = (0..3)
        .map(|_| spawn!(wait_once, cond.clone(), ready.clone(), announce.clone()).unwrap())
        .collect();
    let guard = announce.lock().unwrap();
    let (guard, timed_out) = announce.wait_while_timeout(guard, BOUND, || ready.load() < 3);
    assert!(!timed_out);
    drop(guard);
    // Each waiter counted itself while holding `cond`'s lock and released it
    // only by waiting, so once we hold it all three are waiting.
    let guard = cond.lock().unwrap();
    cond.notify(1);
    drop(guard);
    let woken = waiters
        .into_iter()
        .map(|w| w.join().unwrap().unwrap())
        .filter(|&woken| woken)
        .count();
    assert_eq!(woken, 1);
}

#[process_entry]
fn wait_then_say_so(cond: Condition, waiting: Event, woken: Event) -> Result<(), String> {
    let guard = cond.lock().map_err(text)?;
    waiting.set();
    let guard = cond.wait(guard);
    drop(guard);
    woken.set();
    Ok(())
}

#[test]
fn a_waiter_arriving_after_a_notify_does_not_take_its_wake_up() {
    let cond = Condition::new().unwrap();
    let (waiting, woken) = (Event::new().unwrap(), Event::new().unwrap());
    let child = spawn!(
        wait_then_say_so,
        cond.clone(),
        waiting.clone(),
        woken.clone()
    )
    .unwrap();
    assert!(waiting.wait_timeout(BOUND));
    // The child set `waiting` holding the lock, and gives it up only by
    // waiting: once we hold it, the child waits.
    let guard = cond.lock().unwrap();
    cond.notify_all();
    // Stopped, the child cannot take its wake-up before we look.
    let pid = rustix::process::Pid::from_raw(child.pid() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
    eventually("the child is stopped", || {
        state_of(child.pid()) == Some(b'T')
    });
    // We arrive after the notify, and look at once: the wake-up is not ours.
    let (guard, timed_out) = cond.wait_timeout(guard, Duration::ZERO);
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();
    assert!(
        timed_out,
        "took the wake-up of a waiter notified before it came"
    );
    drop(guard);
    assert!(woken.wait_timeout(BOUND), "the notified waiter slept on");
    child.join().unwrap().unwrap();
}

#[test]
fn condition_wait_timeout_gives_up_within_bounds() {
    let cond = Condition::new().unwrap();
    let guard = cond.lock().unwrap();
    let deadline = Duration::from_millis(300);
    let start = Instant::now();
    let (guard, timed_out) = cond.wait_timeout(guard, deadline);
    assert_within(start.elapsed(), deadline);
    assert!(timed_out);
    drop(guard);
    assert!(cond.try_lock().is_ok());
}

#[process_entry]
fn hold_condition(cond: Condition, held: Event, release: Event) -> Result<(), String> {
    let _guard = cond.lock().map_err(text)?;
    cond.notify_all();
    held.set();
    release.wait_timeout(BOUND);
    Ok(())
}

#[test]
fn condition_wait_takes_back_a_lock_whose_holder_died() {
    let cond = Condition::new().unwrap();
    let (held, release) = (Event::new().unwrap(), Event::new().unwrap());
    let guard = cond.lock().unwrap();
    let child = spawn!(hold_condition, cond.clone(), held.clone(), release.clone()).unwrap();
    let start = Instant::now();
    let ((guard, timed_out), child) = std::thread::scope(|s| {
        // The child notifies us, then dies holding the lock we must take back.
        let killer = s.spawn(|| {
            assert!(held.wait_timeout(BOUND));
            child.kill().unwrap();
            child
        });
        let woken = cond.wait_timeout(guard, BOUND);
        (woken, killer.join().unwrap())
    });
    assert!(
        !timed_out,
        "woken by the notify, after {:?}",
        start.elapsed()
    );
    // The waiter has the lock, freed by the death.
    assert!(matches!(cond.try_lock(), Err(TryLockError::WouldBlock)));
    drop(guard);
    // And the condition still works.
    let guard = cond.lock().unwrap();
    let (_guard, timed_out) = cond.wait_timeout(guard, Duration::from_millis(10));
    assert!(timed_out);
    assert!(child.join().unwrap_err().is_signaled());
}

// -------------------------------------------------------------- Barrier

const PARTIES: usize = 5;
const ROUNDS: u64 = 100;

#[process_entry]
fn march(
    barrier: Barrier,
    progress: Array<u64>,
    arrivals: Array<u64>,
    me: usize,
) -> Result<(), String> {
    for round in 1..=ROUNDS {
        progress.lock().map_err(text)?[me] = round;
        let index = barrier.wait_timeout(BOUND).map_err(text)?;
        arrivals.lock().map_err(text)?[index] += 1;
        let seen = progress.to_vec().map_err(text)?;
        if seen.iter().any(|&r| r != round) {
            return Err(format!("round {round}: saw progress {seen:?}"));
        }
        barrier.wait_timeout(BOUND).map_err(text)?;
    }
    Ok(())
}

#[test]
fn barrier_keeps_five_processes_in_step_for_100_rounds() {
    let barrier = Barrier::new(PARTIES).unwrap();
    let progress = Array::<u64>::new(PARTIES).unwrap();
    let arrivals = Array::<u64>::new(PARTIES).unwrap();
    let children: Vec<_> = (0..PARTIES)
        .map(|me| {
            spawn!(
                march,
                barrier.clone(),
                progress.clone(),
                arrivals.clone(),
                me
            )
            .unwrap()
        })
        .collect();
    for child in children {
        child.join().unwrap().unwrap();
    }
    // Every round handed out each arrival index exactly once.
    assert_eq!(arrivals.to_vec().unwrap(), [ROUNDS; PARTIES]);
    assert!(!barrier.is_broken());
}

#[process_entry]
fn arrive(barrier: Barrier) -> Result<usize, String> {
    barrier
        .wait_timeout(BOUND)
        .map_err(|e| format!("{:?}", e.kind()))
}

#[test]
fn barrier_breaks_when_a_waiting_process_is_killed() {
    let barrier = Barrier::new(3).unwrap();
    let doomed = spawn!(arrive, barrier.clone()).unwrap();
    eventually("the child waits at the barrier", || {
        barrier.n_waiting() == 1
    });
    doomed.kill().unwrap();
    let start = Instant::now();
    let err = barrier.wait_timeout(BOUND).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BrokenBarrier, "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert!(barrier.is_broken());
    assert!(doomed.join().unwrap_err().is_signaled());

    // Reset makes it whole again.
    barrier.reset();
    assert!(!barrier.is_broken());
    let others: Vec<_> = (0..2)
        .map(|_| spawn!(arrive, barrier.clone()).unwrap())
        .collect();
    let mut indices = vec![barrier.wait_timeout(BOUND).unwrap()];
    for other in others {
        indices.push(other.join().unwrap().unwrap());
    }
    indices.sort();
    assert_eq!(indices, [0, 1, 2]);
}

#[test]
fn a_party_killed_while_waiting_is_not_counted_as_arrived() {
    // The others arrive before anyone looked at the dead party: the last
    // arrival must break the barrier, not trip it for three.
    let barrier = Barrier::new(3).unwrap();
    let doomed = spawn!(arrive, barrier.clone()).unwrap();
    eventually("the first child waits", || barrier.n_waiting() == 1);
    doomed.kill().unwrap();
    assert!(doomed.join().unwrap_err().is_signaled());
    let second = spawn!(arrive, barrier.clone()).unwrap();
    eventually("the second child waits", || barrier.n_waiting() == 2);
    // Stopped, the second cannot notice the death before we arrive.
    let pid = rustix::process::Pid::from_raw(second.pid() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
    eventually("the second child is stopped", || {
        state_of(second.pid()) == Some(b'T')
    });
    let mine = barrier.wait_timeout(BOUND);
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();
    assert_eq!(
        mine.map_err(|e| e.kind()),
        Err(ErrorKind::BrokenBarrier),
        "tripped with a dead party"
    );
    assert_eq!(second.join().unwrap(), Err("BrokenBarrier".to_string()));
}

#[process_entry]
fn march_until_broken(barrier: Barrier, work: Duration) -> String {
    loop {
        if let Err(e) = barrier.wait() {
            return format!("{:?}", e.kind());
        }
        // Work between rounds (not synchronisation): it keeps the parties
        // that do none asleep inside `wait` nearly all the time.
        std::thread::sleep(work);
    }
}

#[test]
fn a_party_killed_at_a_random_moment_breaks_the_barrier_for_the_others() {
    use std::hash::{BuildHasher, RandomState};
    let random = RandomState::new();
    for round in 0..12u64 {
        let barrier = Barrier::new(3).unwrap();
        let work = |party: u64| Duration::from_millis(if party == 0 { 0 } else { 2 });
        let mut parties: Vec<_> = (0..3)
            .map(|party| spawn!(march_until_broken, barrier.clone(), work(party)).unwrap())
            .collect();
        // Somewhere within the first rounds, or at the start, and while the
        // victim is inside `wait` (asleep: it does no work, so its only
        // sleep is there). A process killed between two waits is one the
        // barrier cannot know was coming.
        let delay = random.hash_one(round) % 30;
        std::thread::sleep(Duration::from_millis(delay));
        let victim = parties.remove(0);
        eventually("the victim sleeps in wait", || {
            state_of(victim.pid()) == Some(b'S')
        });
        victim.kill().unwrap();
        assert!(victim.join().unwrap_err().is_signaled());
        // `wait` has no timeout: only the barrier breaking ends it.
        for mut survivor in parties {
            let ended = survivor.join_timeout(BOUND).unwrap();
            assert_eq!(
                ended.as_deref(),
                Some("BrokenBarrier"),
                "round {round} (killed after {delay} ms): a survivor hung"
            );
        }
    }
}

#[test]
fn barrier_abort_fails_current_and_later_waiters_until_reset() {
    let barrier = Barrier::new(2).unwrap();
    let waiter = spawn!(arrive, barrier.clone()).unwrap();
    eventually("the child waits at the barrier", || {
        barrier.n_waiting() == 1
    });
    barrier.abort();
    assert_eq!(waiter.join().unwrap().unwrap_err(), "BrokenBarrier");
    assert_eq!(barrier.wait().unwrap_err().kind(), ErrorKind::BrokenBarrier);
    barrier.reset();
    let waiter = spawn!(arrive, barrier.clone()).unwrap();
    let mine = barrier.wait_timeout(BOUND).unwrap();
    assert_eq!(mine + waiter.join().unwrap().unwrap(), 1);
}

#[test]
fn barrier_wait_timeout_breaks_the_barrier_within_bounds() {
    let barrier = Barrier::new(2).unwrap();
    let deadline = Duration::from_millis(300);
    let start = Instant::now();
    let err = barrier.wait_timeout(deadline).unwrap_err();
    assert_within(start.elapsed(), deadline);
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(barrier.is_broken());
    // Others now fail at once, as in Python.
    let other = spawn!(arrive, barrier.clone()).unwrap();
    assert_eq!(other.join().unwrap().unwrap_err(), "BrokenBarrier");
}

// ---------------------------------------------------------------- Event

#[process_entry]
fn await_event(go: Event, ready: Semaphore) -> bool {
    ready.release().is_ok() && go.wait_timeout(BOUND)
}

#[test]
fn event_wakes_waiters_in_three_processes() {
    let go = Event::new().unwrap();
    let ready = Semaphore::new(0).unwrap();
    let waiters: Vec<_> = (0..3)
        .map(|_| spawn!(await_event, go.clone(), ready.clone()).unwrap())
        .collect();
    for _ in 0..3 {
        ready
            .acquire_timeout(BOUND)
            .expect("a waiter is ready")
            .forget();
    }
    assert!(!go.is_set());
    go.set();
    for waiter in waiters {
        assert!(waiter.join().unwrap());
    }
    go.clear();
    assert!(!go.is_set());
}

#[test]
fn event_wait_timeout_gives_up_within_bounds() {
    let event = Event::new().unwrap();
    let deadline = Duration::from_millis(300);
    let start = Instant::now();
    assert!(!event.wait_timeout(deadline));
    assert_within(start.elapsed(), deadline);
}

// ------------------------------------------------------------ Semaphore

#[process_entry]
fn crowd(slots: Semaphore, inside: Value<u32>, most: Value<u32>, times: u32) -> Result<(), String> {
    for _ in 0..times {
        let _permit = slots.acquire_timeout(BOUND).ok_or("no permit")?;
        let now = {
            let mut inside = inside.lock().map_err(text)?;
            *inside += 1;
            *inside
        };
        {
            let mut most = most.lock().map_err(text)?;
            *most = (*most).max(now);
        }
        *inside.lock().map_err(text)? -= 1;
    }
    Ok(())
}

#[test]
fn semaphore_admits_at_most_its_value_across_processes() {
    let slots = Semaphore::new(2).unwrap();
    let inside = Value::new(0u32).unwrap();
    let most = Value::new(0u32).unwrap();
    let children: Vec<_> = (0..4)
        .map(|_| spawn!(crowd, slots.clone(), inside.clone(), most.clone(), 2000).unwrap())
        .collect();
    for child in children {
        child.join().unwrap().unwrap();
    }
    assert!((1..=2).contains(&most.load()));
    assert_eq!(slots.value(), 2);
}

#[process_entry]
fn release_bounded(sem: BoundedSemaphore) -> Option<String> {
    sem.release().err().map(|e| format!("{:?}", e.kind()))
}

#[test]
fn bounded_semaphore_refuses_release_above_its_initial_value() {
    let sem = BoundedSemaphore::new(1).unwrap();
    assert_eq!(
        spawn!(release_bounded, sem.clone())
            .unwrap()
            .join()
            .unwrap(),
        Some("TooManyReleases".to_string())
    );
    sem.acquire().forget();
    assert_eq!(
        spawn!(release_bounded, sem.clone())
            .unwrap()
            .join()
            .unwrap(),
        None
    );
    assert_eq!(sem.value(), 1);
}

#[process_entry]
fn hold_permits(sem: Semaphore, n: u32, held: Event) {
    let guards: Vec<_> = (0..n).map(|_| sem.acquire()).collect();
    held.set();
    // Holds them until killed.
    loop {
        std::thread::park();
        let _ = &guards;
    }
}

#[test]
fn permits_of_a_killed_holder_come_back() {
    let sem = Semaphore::new(3).unwrap();
    let held = Event::new().unwrap();
    let holder = spawn!(hold_permits, sem.clone(), 2, held.clone()).unwrap();
    assert!(held.wait_timeout(BOUND));
    let mine = sem.acquire();
    assert_eq!(sem.value(), 0);
    holder.kill().unwrap();
    assert!(holder.join().unwrap_err().is_signaled());
    // Waiters notice the death and take the dead holder's permits.
    let start = Instant::now();
    let first = sem
        .acquire_timeout(BOUND)
        .expect("a dead holder's permit came back");
    let second = sem.acquire_timeout(BOUND).expect("both came back");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    drop((mine, first, second));
    assert_eq!(sem.value(), 3, "no permit lost or made");
}

#[test]
fn permits_of_a_killed_holder_come_back_to_try_acquire_and_short_waits() {
    let sem = Semaphore::new(2).unwrap();
    let held = Event::new().unwrap();
    let holder = spawn!(hold_permits, sem.clone(), 2, held.clone()).unwrap();
    assert!(held.wait_timeout(BOUND));
    holder.kill().unwrap();
    assert!(holder.join().unwrap_err().is_signaled());
    // The holder is gone: a look that gives up at once (or sooner than a
    // waiter's periodic check) still finds its permits.
    let first = sem
        .try_acquire()
        .expect("try_acquire takes a dead holder's permit");
    let second = sem
        .acquire_timeout(Duration::from_millis(1))
        .expect("a short wait takes a dead holder's permit");
    drop((first, second));
    assert_eq!(sem.value(), 2, "no permit lost or made");
}

#[process_entry]
fn hold_bounded(sem: BoundedSemaphore, held: Event) {
    let _guard = sem.acquire();
    held.set();
    loop {
        std::thread::park();
    }
}

#[test]
fn a_bounded_semaphore_keeps_its_bound_when_a_holder_dies() {
    let sem = BoundedSemaphore::new(1).unwrap();
    let held = Event::new().unwrap();
    let holder = spawn!(hold_bounded, sem.clone(), held.clone()).unwrap();
    assert!(held.wait_timeout(BOUND));
    holder.kill().unwrap();
    assert!(holder.join().unwrap_err().is_signaled());
    let permit = sem
        .acquire_timeout(BOUND)
        .expect("the dead holder's permit came back");
    assert_eq!(sem.value(), 0);
    drop(permit);
    assert_eq!(sem.value(), 1);
    // Back to its maximum, and no further.
    assert_eq!(
        sem.release().unwrap_err().kind(),
        ErrorKind::TooManyReleases
    );
}

#[test]
fn semaphore_acquire_timeout_gives_up_within_bounds() {
    let sem = Semaphore::new(0).unwrap();
    let deadline = Duration::from_millis(300);
    let start = Instant::now();
    assert!(sem.acquire_timeout(deadline).is_none());
    assert_within(start.elapsed(), deadline);
}

// ----------------------------------------------------------- Lock, RLock

#[process_entry]
fn hold_lock(lock: Lock, held: Event, release: Event) -> Result<(), String> {
    let _guard = lock.lock().map_err(text)?;
    held.set();
    release.wait_timeout(BOUND);
    Ok(())
}

#[test]
fn lock_reports_owner_death_after_kill() {
    let lock = Lock::new().unwrap();
    let (held, release) = (Event::new().unwrap(), Event::new().unwrap());
    let child = spawn!(hold_lock, lock.clone(), held.clone(), release.clone()).unwrap();
    assert!(held.wait_timeout(BOUND));
    assert!(lock.try_lock().is_err());
    child.kill().unwrap();

    let start = Instant::now();
    let err = lock.lock().unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(err.kind(), ErrorKind::OwnerDied);
    let message = err.to_string();
    assert!(message.contains("died"), "{message}");
    assert!(message.contains(&child.pid().to_string()), "{message}");

    // The lock was left free: it can be taken and works as before.
    let guard = lock.lock().unwrap();
    assert!(lock.is_locked());
    drop(guard);
    assert!(!lock.is_locked());
    assert!(child.join().unwrap_err().is_signaled());
}

#[test]
fn try_lock_reports_owner_death_at_once() {
    let lock = Lock::new().unwrap();
    let (held, release) = (Event::new().unwrap(), Event::new().unwrap());
    let child = spawn!(hold_lock, lock.clone(), held.clone(), release.clone()).unwrap();
    assert!(held.wait_timeout(BOUND));
    child.kill().unwrap();
    let pid = child.pid();
    assert!(child.join().unwrap_err().is_signaled());
    let Err(TryLockError::Failed(err)) = lock.try_lock() else {
        panic!("the owner's death was not reported");
    };
    assert_eq!(err.kind(), ErrorKind::OwnerDied);
    assert!(err.to_string().contains(&pid.to_string()));
    assert!(lock.try_lock().is_ok());
}

#[test]
fn lock_timeout_gives_up_within_bounds() {
    let lock = Lock::new().unwrap();
    let (held, release) = (Event::new().unwrap(), Event::new().unwrap());
    let child = spawn!(hold_lock, lock.clone(), held.clone(), release.clone()).unwrap();
    assert!(held.wait_timeout(BOUND));
    for deadline in [
        Duration::ZERO,
        Duration::from_millis(30),
        Duration::from_millis(300),
    ] {
        let start = Instant::now();
        assert!(lock.lock_timeout(deadline).is_err());
        assert_within(start.elapsed(), deadline);
    }
    release.set();
    child.join().unwrap().unwrap();
    assert!(lock.lock_timeout(BOUND).is_ok());
}

#[process_entry]
fn hold_value(value: Value<u64>, held: Event, release: Event) -> Result<(), String> {
    let mut guard = value.lock().map_err(text)?;
    // Not written back: the process is killed before the guard is dropped.
    *guard = 99;
    held.set();
    release.wait_timeout(BOUND);
    Ok(())
}

/// The value keeps what the killed holder last wrote back, not the change
/// its guard still held. `lock` reports the death; `load` just takes the
/// lock the dead holder left.
#[test]
fn value_reports_owner_death_and_keeps_its_contents() {
    let value = Value::new(7u64).unwrap();
    for round in 0..2 {
        let (held, release) = (Event::new().unwrap(), Event::new().unwrap());
        let child = spawn!(hold_value, value.clone(), held.clone(), release.clone()).unwrap();
        assert!(held.wait_timeout(BOUND));
        let deadline = Duration::from_millis(100);
        let start = Instant::now();
        assert!(matches!(
            value.lock_timeout(deadline),
            Err(TryLockError::WouldBlock)
        ));
        assert_within(start.elapsed(), deadline);
        child.kill().unwrap();
        let _ = child.join();
        if round == 0 {
            assert_eq!(value.lock().unwrap_err().kind(), ErrorKind::OwnerDied);
        }
        assert_eq!(value.load(), 7);
        assert!(value.lock().is_ok());
    }
}

#[process_entry]
fn hold_rlock(lock: RLock, held: Event, release: Event) -> Result<(), String> {
    let a = lock.lock().map_err(text)?;
    let b = lock.lock().map_err(text)?;
    let c = lock.lock().map_err(text)?;
    held.set();
    release.wait_timeout(BOUND);
    drop((c, b, a));
    Ok(())
}

#[test]
fn rlock_reports_owner_death_after_kill() {
    let lock = RLock::new().unwrap();
    let (held, release) = (Event::new().unwrap(), Event::new().unwrap());
    let child = spawn!(hold_rlock, lock.clone(), held.clone(), release.clone()).unwrap();
    assert!(held.wait_timeout(BOUND));
    assert!(lock.try_lock().is_err());
    child.kill().unwrap();

    let err = lock.lock().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OwnerDied);
    assert!(err.to_string().contains(&child.pid().to_string()), "{err}");

    // Free again, with a fresh count: one level is one release.
    let guard = lock.lock().unwrap();
    assert!(lock.is_owned());
    drop(guard);
    assert!(!lock.is_owned());
    assert!(lock.try_lock().is_ok());
    assert!(child.join().unwrap_err().is_signaled());
}

#[process_entry]
fn release_rlock(lock: RLock) -> Option<String> {
    lock.release().err().map(|e| format!("{:?}", e.kind()))
}

#[test]
fn rlock_is_reentrant_and_only_its_owner_may_release_it() {
    let lock = RLock::new().unwrap();
    let outer = lock.lock().unwrap();
    let inner = lock.lock_timeout(Duration::ZERO).expect("re-entry");
    // Another process, and another thread, do not own it.
    assert_eq!(
        spawn!(release_rlock, lock.clone()).unwrap().join().unwrap(),
        Some("NotOwner".to_string())
    );
    std::thread::scope(|s| {
        s.spawn(|| {
            assert_eq!(lock.release().unwrap_err().kind(), ErrorKind::NotOwner);
            assert!(matches!(lock.try_lock(), Err(TryLockError::WouldBlock)));
        });
    });
    drop(inner);
    assert!(lock.is_owned());
    outer.forget();
    lock.release().unwrap();
    assert!(!lock.is_owned());
    assert_eq!(lock.release().unwrap_err().kind(), ErrorKind::NotOwner);
}
