//! The pool's bookkeeping: the queue of chunks, what each worker holds,
//! one thread per worker slot that collects answers, notices the worker's
//! death, fails exactly what it held and starts its replacement.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use super::launch::{ExitWatch, Launch, Started, WorkerProc};
use super::link::Link;
use super::proto::{Chunk, FDS_PER_MESSAGE, Item, Msg, Outcome, Shared as OnWire};
use super::results::Results;
use super::task;
use rustix::event::{PollFd, PollFlags};

use crate::{Error, ErrorKind};
use crate::{RecvError, Result};

/// Most chunks one worker holds (sent, not answered) at a time.
const DEPTH_MAX: usize = 256;
/// About how much work (by its chunks' measured time) may wait in a worker
/// behind the chunk it runs: enough to hide the round trip to the worker,
/// little enough that a slow chunk holds few others up.
const QUEUED_WORK: Duration = Duration::from_millis(2);
/// What a chunk is assumed to take before any has been timed: as much as
/// may wait, so a new worker holds one chunk until it has answered one (a
/// long first chunk then keeps nothing waiting behind it).
const FIRST_GUESS: Duration = QUEUED_WORK;
/// How often a worker is started before its slot is given up.
const START_ATTEMPTS: usize = 3;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where the results of one job (a `map`, an `imap`, an `apply_async`) go.
#[derive(Debug)]
pub(crate) struct Sink {
    pub(crate) entry: &'static str,
    /// One call (`apply_async`), not items of a sequence.
    single: bool,
    pub(crate) state: Mutex<SinkState>,
    pub(crate) cv: Condvar,
    /// Its chunks still queued are not to run (an `imap` dropped early).
    cancelled: AtomicBool,
}

/// What a job's consumer waits for (so a result wakes it only when it helps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    Never,
    AllDone,
    Index(u64),
    Any,
}

#[derive(Debug)]
pub(crate) struct SinkState {
    pub(crate) results: Results<Result<Item>>,
    /// Items submitted and not answered yet.
    pub(crate) pending: u64,
    pub(crate) wake: Wake,
    /// Results are not wanted (an `AsyncResult` dropped): drop them.
    pub(crate) discard: bool,
    /// Some item's result was an error (kept once results are taken).
    pub(crate) failed: bool,
    /// An `AsyncResult` handed its result over (a job of no items leaves
    /// no results to tell by).
    pub(crate) taken: bool,
}

impl SinkState {
    fn woken(&self) -> bool {
        match self.wake {
            Wake::Never => false,
            Wake::AllDone => self.pending == 0,
            Wake::Index(i) => self.results.contains_key(i),
            Wake::Any => !self.results.is_empty(),
        }
    }
}

impl Sink {
    /// `ordered`: results are taken by index (else as they come).
    pub(crate) fn new(entry: &'static str, single: bool, ordered: bool) -> Arc<Sink> {
        Arc::new(Sink {
            entry,
            single,
            state: Mutex::new(SinkState {
                results: if ordered {
                    Results::ordered()
                } else {
                    Results::by_arrival()
                },
                pending: 0,
                wake: Wake::Never,
                discard: false,
                failed: false,
                taken: false,
            }),
            cv: Condvar::new(),
            cancelled: AtomicBool::new(false),
        })
    }

    /// Stores the results of items `first..`.
    pub(crate) fn deliver(&self, first: u64, results: Vec<Result<Item>>) {
        let mut state = lock(&self.state);
        state.pending = state.pending.saturating_sub(results.len() as u64);
        state.failed |= results.iter().any(Result::is_err);
        if !state.discard {
            for (i, result) in results.into_iter().enumerate() {
                state.results.insert(first + i as u64, result);
            }
        }
        if state.woken() {
            self.cv.notify_all();
        }
    }

    /// Waits until `wake` holds, or the deadline passes (then `None`).
    pub(crate) fn wait(
        &self,
        wake: Wake,
        deadline: Option<Instant>,
    ) -> Option<MutexGuard<'_, SinkState>> {
        let mut state = lock(&self.state);
        state.wake = wake;
        while !state.woken() {
            state = match deadline {
                None => self.cv.wait(state).unwrap_or_else(|p| p.into_inner()),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        state.wake = Wake::Never;
                        return None;
                    }
                    self.cv
                        .wait_timeout(state, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
        state.wake = Wake::Never;
        Some(state)
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    pub(crate) fn context(&self, index: u64) -> String {
        if self.single {
            format!("`{}`", self.entry)
        } else {
            format!("item {index} of `{}`", self.entry)
        }
    }
}

/// A chunk in the pool: queued, or held by a worker.
#[derive(Debug)]
struct Pending {
    chunk: Arc<Chunk>,
    sink: Arc<Sink>,
    /// The job's index of the chunk's first item.
    first: u64,
}

impl Pending {
    fn fail(self, why: &Failure) -> (Arc<Sink>, u64, Vec<Result<Item>>) {
        let results = (0..self.chunk.items.len() as u64)
            .map(|i| Err(why.for_item(&self.sink.context(self.first + i))))
            .collect();
        (self.sink, self.first, results)
    }

    /// As [`fail`](Self::fail), for the chunk a worker held when it was
    /// lost. Every item of the chunk fails, though one alone may have
    /// ended the worker: with more than one, each error says which items
    /// went together, so that `map`'s error, which names the first, is not
    /// taken to name the culprit.
    fn fail_held(self, why: &Failure) -> (Arc<Sink>, u64, Vec<Result<Item>>) {
        let items = self.chunk.items.len() as u64;
        if items < 2 {
            return self.fail(why);
        }
        let last = self.first + items - 1;
        let why = Failure {
            message: format!(
                "{} (its worker held items {} to {} together; any of them may have ended it)",
                why.message, self.first, last
            ),
            process: why.process.clone(),
            ..*why
        };
        self.fail(&why)
    }
}

/// Why the items of a chunk failed together (a chunk holds many items,
/// and errors are not `Clone`).
#[derive(Debug)]
struct Failure {
    kind: ErrorKind,
    message: String,
    exitcode: Option<i32>,
    process: Option<String>,
}

impl Failure {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            message: message.into(),
            exitcode: None,
            process: None,
        }
    }

    /// The worker `describe` died (`why` is how, as `join` tells it).
    fn died(describe: String, why: &Error) -> Failure {
        let (kind, how) = match (why.kind(), why.exitcode()) {
            (ErrorKind::Signaled, Some(code)) => (why.kind(), task::signal_text(-code)),
            (ErrorKind::Exited, Some(code)) => (why.kind(), format!("exit code {code}")),
            _ => (ErrorKind::Disconnected, why.to_string()),
        };
        Failure {
            kind,
            message: format!("lost with its worker, which died: {how}"),
            exitcode: why.exitcode(),
            process: Some(describe),
        }
    }

    fn for_item(&self, context: &str) -> Error {
        task::failure(
            self.kind,
            format!("{context} {}", self.message),
            self.exitcode,
            self.process.clone(),
        )
    }
}

type Delivery = (Arc<Sink>, u64, Vec<Result<Item>>);

fn deliver_all(deliveries: Vec<Delivery>) {
    for (sink, first, results) in deliveries {
        sink.deliver(first, results);
    }
}

#[derive(Debug)]
struct Live {
    conn: Arc<dyn Link>,
    proc: Box<dyn WorkerProc>,
    /// Chunks sent to this worker, ever (for `max_tasks_per_child`).
    sent: u64,
    /// Sent and not answered, in the order the worker runs them: the
    /// first is the one it is running.
    outstanding: VecDeque<Pending>,
    /// The outcomes of the first outstanding chunk that came so far (a
    /// chunk's outcomes may come in several messages).
    answers: Vec<Outcome>,
    /// A send failed: the worker is going; send it nothing more.
    gone: bool,
    /// Why the pool killed it for what it sent, if it did.
    cut_off: Option<String>,
    /// Since when the first outstanding chunk has been running (about).
    front_since: Instant,
    /// Average time of a chunk on this worker, once one has been timed.
    chunk_time: Option<Duration>,
}

impl Live {
    fn new(conn: Arc<dyn Link>, proc: Box<dyn WorkerProc>) -> Live {
        Live {
            conn,
            proc,
            sent: 0,
            outstanding: VecDeque::new(),
            answers: Vec::new(),
            gone: false,
            cut_off: None,
            front_since: Instant::now(),
            chunk_time: None,
        }
    }

    /// How many chunks it should hold: about `QUEUED_WORK` of them, going
    /// by their measured time and by how long the current one has run.
    fn depth(&self) -> usize {
        let mut per_chunk = self.chunk_time.unwrap_or(FIRST_GUESS);
        if !self.outstanding.is_empty() {
            per_chunk = per_chunk.max(self.front_since.elapsed());
        }
        let fit = QUEUED_WORK.as_nanos() / per_chunk.as_nanos().max(1);
        (fit as usize).clamp(1, DEPTH_MAX)
    }

    /// Kills it for sending what a worker does not send (`why`), which
    /// its tasks' errors then say.
    fn cut_off(&mut self, why: String) {
        self.cut_off.get_or_insert(why);
        self.proc.kill();
    }

    /// The first outstanding chunk was answered now.
    fn answered(&mut self) {
        let now = Instant::now();
        let took = now.saturating_duration_since(self.front_since);
        self.chunk_time = Some(match self.chunk_time {
            Some(avg) => (avg * 3 + took) / 4,
            None => took,
        });
        self.front_since = now;
    }
}

#[derive(Debug, Default)]
struct Slot {
    worker: Option<Live>,
    /// A worker started for this slot and not ready yet (in its
    /// initializer): here so that `terminate` and `finish` can kill it.
    starting: Option<Box<dyn WorkerProc>>,
    /// Could not be (re)started: serves no more until the next job comes
    /// (its thread then tries again).
    dead: bool,
}

#[derive(Debug)]
struct State {
    queue: VecDeque<Pending>,
    slots: Vec<Slot>,
    next_chunk: u64,
    closed: bool,
    stopping: bool,
    terminated: bool,
    /// Why no worker could be started, when every slot last tried and
    /// failed; cleared when they try again.
    broken: Option<String>,
    /// The job that last made the dead slots try again: each job makes
    /// them try once, so a job submitting its chunks in many batches (an
    /// `imap`) does not make a start fail over and over.
    revived_for: Option<Weak<Sink>>,
}

impl State {
    fn idle(&self) -> bool {
        self.queue.is_empty()
            && self
                .slots
                .iter()
                .all(|s| s.worker.as_ref().is_none_or(|w| w.outstanding.is_empty()))
    }
}

/// What a worker is started with.
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) processes: usize,
    pub(crate) max_tasks: u64,
    /// The initializer: entry name, encoded arguments, and the proxies in
    /// them, kept with them.
    pub(crate) init: Option<(String, Item, task::Copies)>,
    pub(crate) launcher: Box<dyn Launch>,
}

/// The state every pool thread and handle shares.
#[derive(Debug)]
pub(crate) struct Pool {
    state: Mutex<State>,
    /// Notified when the pool runs out of work, or ends.
    idle: Condvar,
    /// Notified when a job comes while a slot is dead, or the pool ends:
    /// the dead slots' threads try to start a worker again.
    revive: Condvar,
    pub(crate) config: Config,
}

impl Pool {
    /// Starts the workers (all at once, then waits for each to be ready)
    /// and a thread per worker.
    pub(crate) fn start(config: Config) -> Result<(Arc<Pool>, Vec<std::thread::JoinHandle<()>>)> {
        let mut started = Vec::new();
        let mut failure = None;
        for _ in 0..config.processes {
            match launch(&config) {
                Ok(worker) => started.push(worker),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let mut ready = Vec::new();
        for (conn, proc) in started {
            if failure.is_some() {
                proc.kill();
                let _ = proc.wait();
                continue;
            }
            match await_ready(&conn, proc) {
                Ok(proc) => ready.push((conn, proc)),
                Err(e) => failure = Some(e),
            }
        }
        if let Some(e) = failure {
            for (_, proc) in ready {
                proc.kill();
                let _ = proc.wait();
            }
            return Err(e);
        }
        let slots = ready
            .into_iter()
            .map(|(conn, proc)| Slot {
                worker: Some(Live::new(conn, proc)),
                starting: None,
                dead: false,
            })
            .collect();
        let pool = Arc::new(Pool {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                slots,
                next_chunk: 0,
                closed: false,
                stopping: false,
                terminated: false,
                broken: None,
                revived_for: None,
            }),
            idle: Condvar::new(),
            revive: Condvar::new(),
            config,
        });
        let mut threads = Vec::new();
        for idx in 0..pool.config.processes {
            let shared = Arc::clone(&pool);
            let spawned = std::thread::Builder::new()
                .name(format!("multiproc-pool-{idx}"))
                .spawn(move || shared.serve_slot(idx));
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    pool.terminate();
                    for t in threads {
                        let _ = t.join();
                    }
                    return Err(task::io_error("starting a pool thread", e));
                }
            }
        }
        Ok((pool, threads))
    }

    /// Whether the pool takes a new job: not once closed (or terminated).
    /// A job admitted before [`close`](Self::close) may go on submitting
    /// its items after it ([`submit`](Self::submit) with `admitted`).
    pub(crate) fn admit(&self) -> Result<()> {
        let state = lock(&self.state);
        if state.terminated || state.closed {
            return Err(closed());
        }
        Ok(())
    }

    /// Queues the chunks of a job (each `(first index, items)`). `admitted`:
    /// the job was [admitted](Self::admit) before, so the pool takes its
    /// chunks after `close` too, until it is joined or terminated (Python's
    /// pool has taken a whole `imap` input by then; a lazy one here has not).
    pub(crate) fn submit(
        &self,
        sink: &Arc<Sink>,
        chunks: Vec<(u64, Vec<Item>)>,
        admitted: bool,
    ) -> Result<()> {
        let mut state = lock(&self.state);
        // (Terminating and joining close the pool too.)
        if state.closed && !admitted {
            return Err(closed());
        }
        if state.terminated || state.stopping {
            return Err(task::error(
                ErrorKind::Disconnected,
                "the pool was joined or terminated before these items were submitted",
            ));
        }
        // Slots that could not start a worker (a failure that may have
        // passed: no descriptors or processes left then) try again, a few
        // times each, once per job; if none can, its chunks fail. So a
        // pool whose starts always fail makes a few attempts per job, never
        // a loop of them.
        if state.slots.iter().any(|slot| slot.dead) {
            let job = Arc::downgrade(sink);
            if !state.revived_for.as_ref().is_some_and(|w| w.ptr_eq(&job)) {
                state.revived_for = Some(job);
                state.broken = None;
                for slot in &mut state.slots {
                    slot.dead = false;
                }
                self.revive.notify_all();
            } else if let Some(why) = &state.broken {
                return Err(task::error(
                    ErrorKind::Spawn,
                    format!("the pool has no workers left: {why}"),
                ));
            }
        }
        if self.config.launcher.remote() {
            for (first, items) in &chunks {
                if let Some(i) = items.iter().position(|item| !item.fds.is_empty()) {
                    return Err(task::error(
                        ErrorKind::InvalidInput,
                        format!(
                            "{}: the arguments cannot go to a worker on another machine: \
                             the value {}",
                            sink.context(first + i as u64),
                            super::link::REMOTE_HANDLE
                        ),
                    ));
                }
            }
        }
        let items: usize = chunks.iter().map(|(_, items)| items.len()).sum();
        lock(&sink.state).pending += items as u64;
        for (first, items) in chunks {
            let id = state.next_chunk;
            state.next_chunk += 1;
            state.queue.push_back(Pending {
                chunk: Arc::new(Chunk {
                    id,
                    entry: sink.entry.to_string(),
                    items,
                }),
                sink: Arc::clone(sink),
                first,
            });
        }
        let mut failed = Vec::new();
        for idx in 0..state.slots.len() {
            self.dispatch(&mut state, idx, &mut failed);
        }
        drop(state);
        deliver_all(failed);
        Ok(())
    }

    /// Drops the job's chunks that have not gone to a worker yet.
    pub(crate) fn cancel(&self, sink: &Arc<Sink>) {
        sink.cancelled.store(true, Ordering::Relaxed);
        let mut state = lock(&self.state);
        state.queue.retain(|p| !Arc::ptr_eq(&p.sink, sink));
        if state.idle() {
            self.idle.notify_all();
        }
    }

    /// Sends queued chunks to the worker of slot `idx` if it holds few.
    fn dispatch(&self, state: &mut State, idx: usize, failed: &mut Vec<Delivery>) {
        let live_workers = state
            .slots
            .iter()
            .filter(|s| s.worker.as_ref().is_some_and(|w| !w.gone))
            .count()
            .max(1);
        let max_tasks = self.config.max_tasks;
        let State { queue, slots, .. } = state;
        let Some(live) = slots[idx].worker.as_mut().filter(|w| !w.gone) else {
            return;
        };
        // Enough that the worker never waits for us between chunks, few
        // enough that the others get their share of the tail.
        let depth = live.depth();
        if live.outstanding.len() > depth / 2 || queue.is_empty() {
            return;
        }
        let share = queue.len().div_ceil(live_workers);
        let mut room = (depth - live.outstanding.len()).min(share);
        if max_tasks != 0 {
            room = room.min(max_tasks.saturating_sub(live.sent) as usize);
        }
        let mut batch = Vec::new();
        let mut fds = 0;
        while batch.len() < room {
            let Some(next) = queue.front() else { break };
            if next.sink.is_cancelled() {
                queue.pop_front();
                continue;
            }
            let chunk_fds: usize = next.chunk.items.iter().map(|i| i.fds.len()).sum();
            if !batch.is_empty() && fds + chunk_fds > FDS_PER_MESSAGE {
                break;
            }
            fds += chunk_fds;
            batch.extend(queue.pop_front());
        }
        if batch.is_empty() {
            return;
        }
        let sent = send_run(&*live.conn, &batch);
        match sent {
            // Each chunk alone, then: the message may be too large only
            // together (a chunk that cannot go fails alone).
            Err(e) if e.kind() == ErrorKind::Encode && batch.len() > 1 => {
                let mut batch = batch.into_iter();
                while let Some(p) = batch.next() {
                    let one = vec![p];
                    let sent = send_run(&*live.conn, &one);
                    if !accept_sent(live, queue, failed, one, sent) {
                        // Gone, and that chunk is back at the front:
                        // the rest go back behind it, in order.
                        for p in batch.rev() {
                            queue.insert(1, p);
                        }
                        return;
                    }
                }
            }
            sent => {
                accept_sent(live, queue, failed, batch, sent);
            }
        }
    }

    fn dispatch_all(&self, state: &mut State, failed: &mut Vec<Delivery>) {
        for idx in 0..state.slots.len() {
            self.dispatch(state, idx, failed);
        }
    }

    /// The thread of slot `idx`: collects its worker's answers, and
    /// replaces it when it dies, until the pool ends.
    fn serve_slot(&self, idx: usize) {
        loop {
            let (conn, exit) = match &lock(&self.state).slots[idx].worker {
                Some(live) => (Arc::clone(&live.conn), live.proc.exit_watch()),
                None => return,
            };
            self.collect(idx, &conn, &exit);
            drop(conn);
            if !self.bury(idx) {
                return;
            }
            while !self.replace(idx) {
                if !self.await_revival(idx) {
                    return;
                }
            }
        }
    }

    /// After [`replace`](Self::replace) failed: waits while slot `idx` is
    /// dead, until a job comes (true: try again) or the pool ends (false).
    fn await_revival(&self, idx: usize) -> bool {
        let mut state = lock(&self.state);
        while state.slots[idx].dead && !state.terminated && !state.stopping {
            state = self.revive.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        !state.terminated && !state.stopping
    }

    /// Takes the worker's answers until its connection ends, or until it
    /// has exited (`exit`: its exit descriptor) and left nothing unread.
    fn collect(&self, idx: usize, conn: &Arc<dyn Link>, exit: &ExitWatch) {
        loop {
            let Some(got) = receive(&**conn, exit) else {
                return;
            };
            let (id, outcomes) = match got {
                Ok(Msg::Done { id, outcomes }) => (id, outcomes),
                // Not what a worker says: it is not to be trusted.
                Ok(_) => {
                    let why = "it sent a message out of turn (not the answer to a task)";
                    if let Some(live) = lock(&self.state).slots[idx].worker.as_mut() {
                        live.cut_off(why.into());
                    }
                    return;
                }
                Err(RecvError::Failed(e)) => {
                    let why = format!("its message could not be decoded: {e:#}");
                    if let Some(live) = lock(&self.state).slots[idx].worker.as_mut() {
                        live.cut_off(why);
                    }
                    return;
                }
                Err(RecvError::Disconnected) => return,
            };
            let mut state = lock(&self.state);
            let Some(live) = state.slots[idx].worker.as_mut() else {
                return;
            };
            let describe = live.proc.describe();
            let expected = match live.outstanding.front() {
                Some(p) if p.chunk.id == id => p.chunk.items.len(),
                _ => {
                    live.cut_off(format!(
                        "it answered task chunk {id}, which it does not hold (or not first)"
                    ));
                    return;
                }
            };
            if live.answers.len() + outcomes.len() > expected {
                live.cut_off(format!(
                    "it sent more outcomes than the {expected} items of task chunk {id}"
                ));
                return;
            }
            live.answers.extend(outcomes);
            if live.answers.len() < expected {
                continue;
            }
            let outcomes = std::mem::take(&mut live.answers);
            let Some(done) = live.outstanding.pop_front() else {
                return;
            };
            live.answered();
            let mut failed = Vec::new();
            self.dispatch(&mut state, idx, &mut failed);
            if state.idle() {
                self.idle.notify_all();
            }
            drop(state);
            deliver_all(failed);
            let results = outcomes
                .into_iter()
                .enumerate()
                .map(|(i, outcome)| {
                    let index = done.first + i as u64;
                    match outcome {
                        Outcome::Value(item) => Ok(item),
                        Outcome::Panicked(report) => Err(task::panic_error(
                            report,
                            done.sink.context(index),
                            describe.clone(),
                        )),
                        Outcome::Failed { kind, message } => {
                            Err(task::item_error(kind, message, done.sink.context(index)))
                        }
                    }
                })
                .collect();
            done.sink.deliver(done.first, results);
        }
    }

    /// The worker of slot `idx` is gone: learns how it ended, fails the
    /// chunk it was running with that, puts back the ones it had not
    /// started. Returns whether to start a replacement.
    fn bury(&self, idx: usize) -> bool {
        let Some(live) = lock(&self.state).slots[idx].worker.take() else {
            return false;
        };
        let Live {
            proc,
            mut outstanding,
            cut_off,
            ..
        } = live;
        let describe = proc.describe();
        let why = proc.wait();
        let mut state = lock(&self.state);
        let mut failed = Vec::new();
        if let Some(running) = outstanding.pop_front() {
            let why = match (cut_off, &why) {
                // Killed by the pool, not dead of itself.
                (Some(reason), _) => Failure {
                    kind: ErrorKind::Disconnected,
                    message: format!("lost with its worker, which the pool cut off: {reason}"),
                    exitcode: None,
                    process: Some(describe),
                },
                (None, Err(e)) => Failure::died(describe, e),
                // A clean exit in the middle of a task (`exit(0)` from
                // it): an exit all the same, with its code.
                (None, Ok(())) => Failure::died(
                    describe,
                    &Error::new(ErrorKind::Exited, "exit code 0").with_exitcode(0),
                ),
            };
            failed.push(running.fail_held(&why));
        }
        for p in outstanding.into_iter().rev() {
            state.queue.push_front(p);
        }
        let again = !state.terminated && !state.stopping;
        if !again {
            failed.extend(state.queue.drain(..).map(|p| p.fail(&ended())));
        }
        self.dispatch_all(&mut state, &mut failed);
        if state.idle() {
            self.idle.notify_all();
        }
        drop(state);
        deliver_all(failed);
        again
    }

    /// Starts a new worker in slot `idx`; false if the pool ended meanwhile
    /// or no worker could be started.
    fn replace(&self, idx: usize) -> bool {
        // A start can fail by bad luck (a worker killed while it starts);
        // a failure every time (an initializer that always fails, no more
        // processes allowed) ends the slot.
        let mut started = self.start_worker(idx);
        for _ in 1..START_ATTEMPTS {
            if started.is_ok() || self.ended() {
                break;
            }
            started = self.start_worker(idx);
        }
        let mut state = lock(&self.state);
        let mut failed = Vec::new();
        let (conn, proc) = match started {
            Ok(Some(worker)) => worker,
            Ok(None) => return false,
            // Killed by `terminate` or `finish` while it started.
            Err(_) if state.terminated || state.stopping => return false,
            Err(e) => {
                state.slots[idx].dead = true;
                if state.slots.iter().all(|s| s.dead) {
                    let why = format!("{e:#}");
                    let err = Failure::new(
                        ErrorKind::Spawn,
                        format!("cannot run: the pool has no workers left: {why}"),
                    );
                    failed.extend(state.queue.drain(..).map(|p| p.fail(&err)));
                    state.broken = Some(why);
                }
                // What this slot would have run goes to the others.
                self.dispatch_all(&mut state, &mut failed);
                self.idle.notify_all();
                drop(state);
                deliver_all(failed);
                return false;
            }
        };
        if state.terminated || state.stopping {
            drop(state);
            proc.kill();
            let _ = proc.wait();
            return false;
        }
        state.slots[idx].worker = Some(Live::new(conn, proc));
        self.dispatch(&mut state, idx, &mut failed);
        drop(state);
        deliver_all(failed);
        true
    }

    fn ended(&self) -> bool {
        let state = lock(&self.state);
        state.terminated || state.stopping
    }

    /// Starts a worker for slot `idx` and waits until it is ready. While
    /// it starts it is the slot's `starting`, so that ending the pool kills
    /// it, which ends this wait. `Ok(None)`: the pool ended first.
    fn start_worker(&self, idx: usize) -> Result<Option<Started>> {
        let (conn, proc) = launch(&self.config)?;
        let exit = proc.exit_watch();
        {
            let mut state = lock(&self.state);
            if state.terminated || state.stopping {
                drop(state);
                proc.kill();
                let _ = proc.wait();
                return Ok(None);
            }
            state.slots[idx].starting = Some(proc);
        }
        let first = receive(&*conn, &exit).unwrap_or(Err(RecvError::Disconnected));
        // Only this thread takes it out.
        let Some(proc) = lock(&self.state).slots[idx].starting.take() else {
            return Ok(None);
        };
        let proc = ready(first, proc)?;
        Ok(Some((conn, proc)))
    }

    pub(crate) fn close(&self) {
        lock(&self.state).closed = true;
    }

    /// Waits until every task has been answered, then tells the workers to
    /// exit and kills those still starting. Only after
    /// [`close`](Self::close).
    pub(crate) fn finish(&self) -> Result<()> {
        let mut state = lock(&self.state);
        if !state.closed && !state.terminated {
            return Err(task::error(
                ErrorKind::InvalidInput,
                "join needs the pool closed (or terminated) first",
            ));
        }
        while !state.idle() && !state.terminated {
            state = self.idle.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.stopping = true;
        self.revive.notify_all();
        for slot in &state.slots {
            if let Some(live) = &slot.worker {
                let _ = live.conn.send(&Msg::Stop);
            }
            // A replacement still in its initializer has no task to finish,
            // and nothing is left to give it: it is killed, not waited for.
            // (Python's `join` waits for it, for ever if its initializer
            // never returns.)
            if let Some(proc) = &slot.starting {
                proc.kill();
            }
        }
        Ok(())
    }

    /// Kills every worker (those still starting too) and fails every task
    /// not yet answered.
    pub(crate) fn terminate(&self) {
        let mut state = lock(&self.state);
        state.terminated = true;
        state.closed = true;
        let err = ended();
        let mut failed: Vec<Delivery> = state.queue.drain(..).map(|p| p.fail(&err)).collect();
        for slot in &mut state.slots {
            if let Some(live) = &mut slot.worker {
                live.proc.kill();
                failed.extend(live.outstanding.drain(..).map(|p| p.fail(&err)));
            }
            if let Some(proc) = &slot.starting {
                proc.kill();
            }
        }
        self.idle.notify_all();
        self.revive.notify_all();
        drop(state);
        deliver_all(failed);
    }
}

/// Sends the chunks of `batch` to a worker in one message.
fn send_run(conn: &dyn Link, batch: &[Pending]) -> Result<()> {
    conn.send(&Msg::Run(
        batch.iter().map(|p| OnWire(Arc::clone(&p.chunk))).collect(),
    ))
}

/// Books what the send of `batch` to `live` did: held by the worker, failed
/// (it cannot be encoded), or back at the front of `queue` (the worker is
/// gone; then `false`).
fn accept_sent(
    live: &mut Live,
    queue: &mut VecDeque<Pending>,
    failed: &mut Vec<Delivery>,
    batch: Vec<Pending>,
    sent: Result<()>,
) -> bool {
    match sent {
        Ok(()) => {
            if live.outstanding.is_empty() {
                live.front_since = Instant::now();
            }
            live.sent += batch.len() as u64;
            live.outstanding.extend(batch);
            true
        }
        Err(e) if e.kind() == ErrorKind::Encode => {
            let why = Failure::new(ErrorKind::Encode, format!("could not be sent: {e:#}"));
            failed.extend(batch.into_iter().map(|p| p.fail(&why)));
            true
        }
        Err(_) => {
            // Never received: back to the front, in order; the slot's
            // thread sees the worker gone and replaces it.
            live.gone = true;
            for p in batch.into_iter().rev() {
                queue.push_front(p);
            }
            false
        }
    }
}

fn closed() -> crate::Error {
    task::error(
        ErrorKind::Disconnected,
        "the pool is closed: it takes no more tasks",
    )
}

fn ended() -> Failure {
    Failure::new(
        ErrorKind::Disconnected,
        "was not answered: the pool was terminated",
    )
}

fn launch(config: &Config) -> Result<Started> {
    let init = match &config.init {
        Some((entry, item, _)) => Some((entry.clone(), item.try_clone()?)),
        None => None,
    };
    config.launcher.launch(super::proto::Boot {
        init,
        max_tasks: config.max_tasks,
    })
}

/// Waits for a new worker to say its initializer ran.
fn await_ready(conn: &Arc<dyn Link>, proc: Box<dyn WorkerProc>) -> Result<Box<dyn WorkerProc>> {
    let exit = proc.exit_watch();
    let first = receive(&**conn, &exit).unwrap_or(Err(RecvError::Disconnected));
    ready(first, proc)
}

/// How long a wait on a worker whose process can say it exited goes
/// without looking whether it has.
const EXIT_LOOK: Duration = Duration::from_millis(100);

/// Receives the worker's next message; `None` once its process has exited
/// (as `exit` tells) and left nothing unread. Its connection alone does
/// not tell: a process the worker forked may hold it open after the worker
/// is gone. So a receive that waits looks at `exit` every [`EXIT_LOOK`]:
/// one poll per message, as a plain receive makes, and not two.
fn receive(conn: &dyn Link, exit: &ExitWatch) -> Option<Result<Msg, RecvError>> {
    let exited = || match exit {
        ExitWatch::Fd(fd) => {
            let mut fds = [PollFd::new(fd, PollFlags::IN)];
            matches!(
                crate::sys::poll::poll(&mut fds, Some(Duration::ZERO)),
                Ok(1)
            )
        }
        ExitWatch::Ask(running) => !running(),
        ExitWatch::Unknown => false,
    };
    if matches!(exit, ExitWatch::Unknown) {
        return Some(conn.recv());
    }
    loop {
        if let Some(got) = conn.recv_within(EXIT_LOOK) {
            return Some(got);
        }
        if exited() {
            // Whatever it wrote before it exited is in the socket by now.
            return conn.recv_within(Duration::ZERO);
        }
    }
}

/// What a new worker's first message (`first`) says: ready, or why not.
fn ready(first: Result<Msg, RecvError>, proc: Box<dyn WorkerProc>) -> Result<Box<dyn WorkerProc>> {
    let describe = proc.describe();
    match first {
        Ok(Msg::Ready) => Ok(proc),
        Ok(Msg::InitFailed(outcome)) => {
            let _ = proc.wait();
            Err(match outcome {
                Outcome::Panicked(report) => {
                    task::panic_error(report, "the pool's initializer".into(), describe)
                }
                Outcome::Failed { kind, message } => {
                    task::item_error(kind, message, format!("{describe}: the initializer"))
                }
                Outcome::Value(_) => task::error(ErrorKind::Spawn, "initializer failed"),
            })
        }
        Ok(_) | Err(RecvError::Failed(_)) => {
            proc.kill();
            let _ = proc.wait();
            Err(task::error(
                ErrorKind::Spawn,
                format!("{describe} did not start as a pool worker"),
            ))
        }
        Err(RecvError::Disconnected) => {
            let why = proc.wait();
            Err(match why {
                Err(e) => Failure::died(describe, &e).for_item("the pool's initializer"),
                Ok(()) => task::error(
                    ErrorKind::Spawn,
                    format!("{describe} exited before it was ready"),
                ),
            })
        }
    }
}
