//! The backlog of an unbounded queue: a put never waits. An item that finds
//! the ring (or the side socket) full waits here, in this process's memory,
//! and a feeder thread moves it in as gets make room, in order, as Python's
//! feeder thread does. Later puts of this process queue behind it, so each
//! process's items still arrive in the order it put them.
//!
//! The process flushes its backlogs before it exits (before its children
//! are finished), while gets keep making room; one that stalls for
//! [`EXIT_STALL`] gives up, with a word on stderr.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use super::PutFail;
use super::layout::{FULL_WAITERS, JOINABLE, NOT_FULL, UNFINISHED};
use super::records::{Inner, Record};
use crate::error::Error;
use crate::sys::lock_word::Deadline;

/// How long the exit flush waits for a get that makes no room.
const EXIT_STALL: Duration = Duration::from_secs(30);

/// How long a given-up exit flush waits for the feeder to stop (it looks at
/// least every 50 ms; the wake-up makes it look at once).
const FEEDER_STOP: Duration = Duration::from_secs(1);

/// The exit flush's patience, in milliseconds, when a test shortened it.
#[cfg(feature = "test-hooks")]
static STALL_MS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(EXIT_STALL.as_secs() * 1000);

fn exit_stall() -> Duration {
    #[cfg(feature = "test-hooks")]
    return Duration::from_millis(STALL_MS.load(Relaxed));
    #[cfg(not(feature = "test-hooks"))]
    EXIT_STALL
}

/// Sets how long this process's exit flush waits for a get that makes no
/// room. Not public API: for the queue tests, which cannot wait 30 s.
#[doc(hidden)]
#[cfg(feature = "test-hooks")]
pub fn set_queue_exit_stall(stall: Duration) {
    let ms = u64::try_from(stall.as_millis()).unwrap_or(u64::MAX);
    STALL_MS.store(ms, Relaxed);
}

/// See the module docs.
#[derive(Debug, Default)]
pub(super) struct Backlog {
    /// Set while items wait (read without the lock, on every put).
    waiting: AtomicBool,
    /// Set when this process's exit gave up on handing the items over:
    /// their puts stop waiting, and they are no longer counted as
    /// unfinished (a `JoinableQueue`'s `join` would wait for them for ever).
    abandoned: AtomicBool,
    state: Mutex<State>,
    /// Signalled when the backlog empties.
    drained: Condvar,
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Item>,
    feeding: bool,
}

#[derive(Debug)]
struct Item {
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
    /// The payload is a `Vec<u8>` item's own bytes (see [`Record`]).
    raw: bool,
    /// Counted as unfinished (a `JoinableQueue`) when it was put.
    counted: bool,
}

impl Backlog {
    pub(super) fn is_abandoned(&self) -> bool {
        self.abandoned.load(Acquire)
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The queues of this process with items in their backlog, for the exit flush.
static QUEUES: Mutex<Vec<Weak<Inner>>> = Mutex::new(Vec::new());

/// Puts an item on the unbounded queue `inner` without waiting: into the
/// ring, or (a copy of it) into the backlog.
pub(super) fn put(inner: &Arc<Inner>, record: Record<'_>) -> Result<(), PutFail> {
    match put_now(inner, record) {
        Err(PutFail::Full) => {
            keep(inner, record.payload.to_vec(), record.fds, record.raw).map_err(|(fail, _)| fail)
        }
        done => done,
    }
}

/// Puts an item on the unbounded queue `inner` if the ring has room now
/// and no item of this process waits in the backlog; `Err(PutFail::Full)`
/// if it must wait there (see [`keep`]).
pub(super) fn put_now(inner: &Inner, record: Record<'_>) -> Result<(), PutFail> {
    if inner.backlog.waiting.load(Acquire) {
        return Err(PutFail::Full);
    }
    inner.put_record(record, Deadline::Now, false)
}

/// Keeps an item in the backlog of the unbounded queue `inner`, for the
/// feeder thread to put: its `payload` moved in, its `fds` duplicated. On
/// failure, the payload is handed back.
pub(super) fn keep(
    inner: &Arc<Inner>,
    payload: Vec<u8>,
    fds: &[OwnedFd],
    raw: bool,
) -> Result<(), (PutFail, Vec<u8>)> {
    let backlog = &inner.backlog;
    if inner.is_closed() {
        return Err((PutFail::Closed, payload));
    }
    // Our own copies: the caller's go when its put returns.
    let fds = match fds
        .iter()
        .map(OwnedFd::try_clone)
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(fds) => fds,
        Err(e) => {
            let fail = PutFail::Failed(Error::io("duplicating an item's handles", e));
            return Err((fail, payload));
        }
    };
    let counted = inner.word(JOINABLE).load(Relaxed) != 0;
    if counted {
        inner.word(UNFINISHED).fetch_add(1, Relaxed);
    }
    let mut state = lock(&backlog.state);
    state.items.push_back(Item {
        payload,
        fds,
        raw,
        counted,
    });
    backlog.waiting.store(true, Release);
    if !state.feeding {
        state.feeding = true;
        let feeder = Arc::clone(inner);
        let started = std::thread::Builder::new()
            .name("multiproc-queue-feeder".into())
            .spawn(move || feed(&feeder));
        if let Err(e) = started {
            state.feeding = false;
            let fail = PutFail::Failed(Error::io("starting the queue's feeder thread", e));
            return match state.items.pop_back() {
                Some(item) => {
                    uncount(inner, &item);
                    Err((fail, item.payload))
                }
                None => Err((fail, Vec::new())),
            };
        }
        let mut queues = QUEUES.lock().unwrap_or_else(|p| p.into_inner());
        let this = Arc::downgrade(inner);
        queues.retain(|q| q.strong_count() > 0 && !q.ptr_eq(&this));
        queues.push(this);
        drop(queues);
        crate::spawn::reaper::before_exit(flush_all);
    }
    Ok(())
}

/// The feeder thread: moves the backlog into the ring, waiting for room.
fn feed(inner: &Inner) {
    let backlog = &inner.backlog;
    loop {
        let item = {
            let mut state = lock(&backlog.state);
            match state.items.pop_front() {
                Some(item) => item,
                None => {
                    state.feeding = false;
                    backlog.waiting.store(false, Release);
                    backlog.drained.notify_all();
                    return;
                }
            }
        };
        let record = Record {
            payload: &item.payload,
            fds: &item.fds,
            raw: item.raw,
        };
        match inner.put_record(record, Deadline::Never, item.counted) {
            Ok(()) => {}
            // Shut down: nothing more goes in; what waits is dropped.
            Err(PutFail::Closed) => {
                uncount(inner, &item);
                let mut state = lock(&backlog.state);
                for item in state.items.drain(..) {
                    uncount(inner, &item);
                }
            }
            // An item that cannot be stored (an OS error) is dropped, as a
            // failed put would have been.
            Err(PutFail::Failed(_)) => uncount(inner, &item),
            // Without a deadline, only when the exit flush gave up: this
            // item and those behind it are lost with the process, and are
            // uncounted here, by the one thread that holds them.
            Err(PutFail::Full) => {
                uncount(inner, &item);
                let mut state = lock(&backlog.state);
                for item in state.items.drain(..) {
                    uncount(inner, &item);
                }
            }
        }
    }
}

/// Takes a lost item out of the count of unfinished items; the last one
/// wakes `join`, as the last `task_done` does. (Never below zero: extra
/// `task_done` calls may have taken it there already.)
fn uncount(inner: &Inner, item: &Item) {
    if !item.counted {
        return;
    }
    let before = inner
        .word(UNFINISHED)
        .fetch_update(AcqRel, Acquire, |n| n.checked_sub(1));
    if before == Ok(1) {
        super::joinable::all_done(inner);
    }
}

/// Waits until every backlog of this process is in its queue, while gets
/// make room; called before the process exits.
fn flush_all() {
    // Taken, not copied: a child's exit runs this twice (once after its
    // entry returns, once more from `exit`'s hook), and a queue given up on
    // must not be waited for, nor reported, a second time.
    let queues: Vec<Arc<Inner>> =
        std::mem::take(&mut *QUEUES.lock().unwrap_or_else(|p| p.into_inner()))
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
    for inner in queues {
        let backlog = &inner.backlog;
        let mut state = lock(&backlog.state);
        let mut head = inner.ring.head();
        let mut moved = Instant::now();
        while state.feeding {
            let (next, _) = backlog
                .drained
                .wait_timeout(state, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner());
            state = next;
            if inner.ring.head() != head {
                head = inner.ring.head();
                moved = Instant::now();
            } else if moved.elapsed() >= exit_stall() {
                eprintln!(
                    "multiproc: {} items put on a queue by this process were never \
                     taken (nothing got from the queue for {} s); exiting without them",
                    state.items.len(),
                    exit_stall().as_secs()
                );
                // Stop the feeder, and let it uncount the items (it holds
                // one of them): wake its wait, then wait for it to end.
                backlog.abandoned.store(true, Release);
                inner.wake(FULL_WAITERS, NOT_FULL);
                let stopping = Instant::now();
                while state.feeding && stopping.elapsed() < FEEDER_STOP {
                    state = backlog
                        .drained
                        .wait_timeout(state, Duration::from_millis(10))
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                break;
            }
        }
    }
}
