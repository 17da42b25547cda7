//! [`Pool`]: Python's `multiprocessing.Pool`, over worker processes that
//! never leave a call hanging when one of them dies.

mod launch;
mod link;
mod packed;
mod proto;
mod results;
mod scheduler;
mod task;
mod worker;

/// What launchers of workers on other machines (`cluster/`) use of the
/// pool's internals.
pub(crate) mod internals {
    pub(crate) use super::launch::{Launch, Started, WorkerProc};
    pub(crate) use super::link::{Link, TcpLink};
    pub(crate) use super::proto::{Boot, Hello, Msg};
    pub(crate) use super::worker::{EXIT_ABANDONED, serve};
}

use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle as ThreadHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use self::launch::Launcher;
use self::proto::{FDS_PER_MESSAGE, Item};
use self::results::Results;
use self::scheduler::{Config, Sink, Wake, lock};
use crate::Entry;
use crate::{ErrorKind, Result};

/// Items a `map` encodes before it hands them to the pool (the workers
/// start on them while it encodes the rest).
const SUBMIT_ITEMS: usize = 1024;

/// Chunks an `imap` keeps in the pool per worker, ahead of its consumer.
const IMAP_CHUNKS_PER_WORKER: usize = 64;

/// A pool of worker processes that run entries: Python's
/// `multiprocessing.Pool`.
///
/// Each worker is a child process (this binary, re-executed) that runs
/// tasks one after another. `map`, `starmap` and `imap` split their input
/// into chunks; a worker runs a chunk and sends its results back.
///
/// ```
/// use multiproc::{entry, process_entry, Pool};
///
/// #[process_entry]
/// fn square(x: u64) -> u64 { x * x }
///
/// #[process_entry]
/// fn add(a: u64, b: u64) -> u64 { a + b }
///
/// # fn main() -> multiproc::Result<()> {
/// let pool = Pool::new(2)?;
/// let squares: Vec<u64> = pool.map(entry!(square), 0..10u64)?;
/// assert_eq!(squares, [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]);
///
/// let sums = pool.starmap(entry!(add), vec![(1, 2), (3, 4)])?;
/// assert_eq!(sums, [3, 7]);
///
/// let pending = pool.apply_async(entry!(add), (20, 22))?;
/// assert_eq!(pending.get()?, 42);
///
/// let first: Vec<u64> = pool.imap(entry!(square), 0..)?   // lazy: an endless input is fine
///     .take(3)
///     .collect::<Result<_, _>>()?;
/// assert_eq!(first, [0, 1, 4]);
///
/// pool.close();
/// pool.join()?;
/// # Ok(())
/// # }
/// ```
///
/// # Failures
/// - A task that panics fails only itself: its error
///   ([`Error::is_panicked`](crate::Error::is_panicked)) carries the panic message and says which item.
/// - A worker that dies (killed, `abort`, `exit`, …) fails the chunk it was
///   running with how it died ([`Error::is_signaled`](crate::Error::is_signaled), [`Error::exitcode`](crate::Error::exitcode)),
///   every item of it, each error naming the items that went together (any
///   one may have ended it; `map` reports the first); chunks it had
///   received but not started run elsewhere. It is replaced
///   (its initializer runs again) and the pool keeps serving. No call waits
///   for a dead worker.
/// - A replacement that cannot start (its initializer fails, or the
///   process is out of descriptors) is tried three times; then that
///   worker's place stays empty until the next call (`map`, `apply_async`,
///   `imap`…) submits work, which tries again, once per call. While no worker can start, tasks fail with a
///   [`Spawn`](crate::ErrorKind::Spawn) error saying the pool has no
///   workers left, so a pool whose starts fail for a while serves again
///   afterwards, and one whose starts always fail makes a few attempts per
///   call, never a loop of them.
/// - No call waits for a worker to read either: one that stops reading
///   (its process stopped with `SIGSTOP`) holds up only the tasks sent to
///   it, and [`terminate`](Pool::terminate) (or dropping the pool) kills it
///   and fails them.
/// - `map` and `starmap` return the first error in input order, without
///   waiting for the items after it: those not yet sent to a worker never
///   run. [`imap`](Pool::imap) runs every item and yields each result.
///
/// # Caveats
/// - A task that never ends keeps its worker. [`AsyncResult::get_timeout`]
///   stops waiting for it; [`terminate`](Pool::terminate) (or dropping the
///   pool) kills it.
/// - A worker holds a few chunks at a time (more when they are many), so a
///   chunk may wait behind a slow one of the same worker.
/// - Workers are daemons (they die with this process, however it dies), so,
///   as in Python, a task cannot start processes of its own.
/// - Dropping the pool terminates it: running tasks are killed, queued ones
///   fail. Call [`close`](Pool::close) and [`join`](Pool::join) to let them
///   finish.
/// - A task waits for a worker that is ready, as in Python. If no worker
///   is (each dead worker's replacement is still in an initializer that
///   never returns), tasks wait until one is: [`AsyncResult::get_timeout`]
///   bounds that wait, and [`terminate`](Pool::terminate) (or dropping the
///   pool) kills the workers, starting ones too, and fails the tasks.
pub struct Pool {
    inner: Arc<scheduler::Pool>,
    threads: Mutex<Vec<ThreadHandle<()>>>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("processes", &self.processes())
            .finish_non_exhaustive()
    }
}

/// Configures a [`Pool`]: [`Pool::builder`].
///
/// ```
/// use multiproc::{entry, process_entry, Pool};
///
/// #[process_entry]
/// fn setup(greeting: String) {
///     assert_eq!(greeting, "hello");
/// }
///
/// #[process_entry]
/// fn pid() -> u32 { std::process::id() }
///
/// # fn main() -> multiproc::Result<()> {
/// let pool = Pool::builder()
///     .processes(2)
///     .initializer(entry!(setup), ("hello".to_string(),))
///     .max_tasks_per_child(1)            // a fresh worker for every task
///     .build()?;
/// let a = pool.apply(entry!(pid), ())?;
/// let b = pool.apply(entry!(pid), ())?;
/// assert_ne!(a, b);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Default)]
pub struct PoolBuilder {
    processes: Option<usize>,
    init: Option<Result<(String, Item, task::Copies)>>,
    max_tasks: Option<u64>,
    method: Option<crate::StartMethod>,
    launcher: Option<Launcher>,
}

impl PoolBuilder {
    /// How many worker processes (default: [`cpu_count`](crate::cpu_count)).
    /// 0 makes [`build`](Self::build) fail with
    /// [`ErrorKind::InvalidInput`].
    pub fn processes(mut self, processes: usize) -> PoolBuilder {
        self.processes = Some(processes);
        self
    }

    /// An entry each worker runs once when it starts (replacements too),
    /// before any task. If it fails, [`build`](Self::build) fails with its
    /// error. Manager proxies in `args` keep their objects while the pool
    /// lives; each worker's copy takes a reference of its own.
    pub fn initializer<E: Entry>(mut self, entry: E, args: E::Args) -> PoolBuilder {
        let _ = entry;
        // Decoded only as copies: the encoding takes no reference, the
        // proxies kept with it keep their objects.
        let (item, copies) = task::encode_for_copies(|| task::encode(&args));
        self.init =
            Some(task::key::<E>().and_then(|key| item.map(|item| (key.to_string(), item, copies))));
        self
    }

    /// Replaces each worker after it has run this many tasks (a chunk is
    /// one task, as in Python). Default: never. 0 makes
    /// [`build`](Self::build) fail with
    /// [`ErrorKind::InvalidInput`].
    pub fn max_tasks_per_child(mut self, tasks: u64) -> PoolBuilder {
        self.max_tasks = Some(tasks);
        self
    }

    /// How the workers (replacements too) are started; default: the
    /// process-wide default ([`get_start_method`](crate::get_start_method)).
    /// With [`StartMethod::ForkServer`](crate::StartMethod::ForkServer) a
    /// replacement for a dead worker takes a fraction of a millisecond.
    pub fn start_method(mut self, method: crate::StartMethod) -> PoolBuilder {
        self.method = Some(method);
        self
    }

    /// Runs the workers elsewhere: on a cluster's nodes, with
    /// [`cluster::Slurm`](crate::cluster::Slurm). The launcher then decides
    /// how many workers there are, and [`build`](Self::build) fails if
    /// [`processes`](Self::processes), [`max_tasks_per_child`](Self::max_tasks_per_child)
    /// or [`start_method`](Self::start_method) was also set (a cluster's
    /// workers are started by its own launcher, all at once, and lost ones
    /// are not replaced).
    pub fn launcher(mut self, launcher: impl Into<Launcher>) -> PoolBuilder {
        self.launcher = Some(launcher.into());
        self
    }

    /// Starts the workers and waits until each is ready (its initializer
    /// ran).
    pub fn build(self) -> Result<Pool> {
        if let Some(launcher) = &self.launcher {
            let clash = [
                (self.processes.is_some(), "processes"),
                (self.max_tasks.is_some(), "max_tasks_per_child"),
                (self.method.is_some(), "start_method"),
            ];
            if let Some((_, what)) = clash.iter().find(|(set, _)| *set) {
                return Err(task::error(
                    ErrorKind::InvalidInput,
                    format!(
                        "a pool with a launcher ({launcher:?}) takes no {what}: the launcher decides"
                    ),
                ));
            }
        }
        // Checked before a launcher starts anything (a cluster's job step).
        if self.processes == Some(0) {
            return Err(task::error(
                ErrorKind::InvalidInput,
                "a pool needs at least one worker process",
            ));
        }
        if self.max_tasks == Some(0) {
            return Err(task::error(
                ErrorKind::InvalidInput,
                "max_tasks_per_child must be at least 1",
            ));
        }
        let init = self.init.transpose()?;
        if self.launcher.as_ref().is_some_and(|l| l.0.remote())
            && init
                .as_ref()
                .is_some_and(|(_, item, _)| !item.fds.is_empty())
        {
            return Err(task::error(
                ErrorKind::InvalidInput,
                format!(
                    "the initializer's arguments cannot go to workers on other \
                     machines: the value {}",
                    link::REMOTE_HANDLE
                ),
            ));
        }
        let mut launcher = self.launcher;
        if let Some(launcher) = &mut launcher {
            launcher.0.prepare()?;
        }
        let processes = launcher
            .as_ref()
            .and_then(|l| l.0.processes())
            .or(self.processes)
            .unwrap_or_else(task::cpu_count);
        let launcher = match launcher {
            Some(launcher) => launcher.0,
            None => Box::new(launch::SpawnLauncher {
                method: self.method,
            }),
        };
        let (inner, threads) = scheduler::Pool::start(Config {
            processes,
            max_tasks: self.max_tasks.unwrap_or(0),
            init,
            launcher,
        })?;
        Ok(Pool {
            inner,
            threads: Mutex::new(threads),
        })
    }
}

impl Pool {
    /// A pool of `processes` workers. `Pool::new(0)` is an error of kind
    /// [`ErrorKind::InvalidInput`] (Python's `ValueError`).
    pub fn new(processes: usize) -> Result<Pool> {
        Pool::builder().processes(processes).build()
    }

    /// A [`PoolBuilder`] with the defaults.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// How many workers the pool keeps.
    pub fn processes(&self) -> usize {
        self.inner.config.processes
    }

    /// Calls a one-argument entry on each item; results in input order.
    ///
    /// Chunk size as Python's: `ceil(len / (4 × processes))`. Fails with the
    /// first error in input order, which names the item, as soon as that
    /// and the results before it are in: the items not yet sent to a worker
    /// then never run (Python's `map` runs every item, then raises). To run
    /// every item whatever fails, use [`imap`](Self::imap), which yields
    /// each item's result.
    pub fn map<E, A, I>(&self, entry: E, items: I) -> Result<Vec<E::Output>>
    where
        E: Entry<Args = (A,)>,
        A: Serialize,
        I: IntoIterator<Item = A>,
    {
        let _ = entry;
        let items: Vec<A> = items.into_iter().collect();
        self.run_map(task::key::<E>()?, &items, |a| task::encode(&(a,)), None)
    }

    /// [`map`](Self::map) with chunks of `chunksize` items (at least 1).
    /// A chunk goes to its worker in one message, so one whose items hold
    /// more handles, all told, than a message carries (200 descriptors) is
    /// cut short, and each part is a task of its own (for
    /// [`max_tasks_per_child`](PoolBuilder::max_tasks_per_child)); as for
    /// every call that takes a chunk size.
    pub fn map_chunked<E, A, I>(
        &self,
        entry: E,
        items: I,
        chunksize: usize,
    ) -> Result<Vec<E::Output>>
    where
        E: Entry<Args = (A,)>,
        A: Serialize,
        I: IntoIterator<Item = A>,
    {
        let _ = entry;
        let items: Vec<A> = items.into_iter().collect();
        self.run_map(
            task::key::<E>()?,
            &items,
            |a| task::encode(&(a,)),
            Some(chunksize),
        )
    }

    /// Calls an entry on each argument tuple; results in input order.
    pub fn starmap<E, I>(&self, entry: E, items: I) -> Result<Vec<E::Output>>
    where
        E: Entry,
        I: IntoIterator<Item = E::Args>,
    {
        let _ = entry;
        let items: Vec<E::Args> = items.into_iter().collect();
        self.run_map(task::key::<E>()?, &items, task::encode, None)
    }

    /// [`starmap`](Self::starmap) with chunks of `chunksize` items.
    pub fn starmap_chunked<E, I>(
        &self,
        entry: E,
        items: I,
        chunksize: usize,
    ) -> Result<Vec<E::Output>>
    where
        E: Entry,
        I: IntoIterator<Item = E::Args>,
    {
        let _ = entry;
        let items: Vec<E::Args> = items.into_iter().collect();
        self.run_map(task::key::<E>()?, &items, task::encode, Some(chunksize))
    }

    /// Starts a [`map`](Self::map) and returns at once (Python's
    /// `map_async`): [`AsyncResult::get`] gives every result in input
    /// order once all are in, or the first error in input order (naming
    /// its item). Every item runs, whatever fails. Default chunk size, as
    /// `map`'s.
    ///
    /// ```
    /// use multiproc::{entry, process_entry, Pool};
    ///
    /// #[process_entry]
    /// fn square(x: u64) -> u64 { x * x }
    ///
    /// # fn main() -> multiproc::Result<()> {
    /// let pool = Pool::new(2)?;
    /// let pending = pool.map_async(entry!(square), 0..5u64)?;
    /// // … other work meanwhile …
    /// assert_eq!(pending.get()?, [0, 1, 4, 9, 16]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn map_async<E, A, I>(&self, entry: E, items: I) -> Result<AsyncResult<Vec<E::Output>>>
    where
        E: Entry<Args = (A,)>,
        A: Serialize,
        I: IntoIterator<Item = A>,
    {
        let _ = entry;
        let items: Vec<A> = items.into_iter().collect();
        self.run_map_async(task::key::<E>()?, &items, |a| task::encode(&(a,)))
    }

    /// Starts a [`starmap`](Self::starmap) and returns at once (Python's
    /// `starmap_async`); see [`map_async`](Self::map_async).
    pub fn starmap_async<E, I>(&self, entry: E, items: I) -> Result<AsyncResult<Vec<E::Output>>>
    where
        E: Entry,
        I: IntoIterator<Item = E::Args>,
    {
        let _ = entry;
        let items: Vec<E::Args> = items.into_iter().collect();
        self.run_map_async(task::key::<E>()?, &items, task::encode)
    }

    /// Like [`map`](Self::map), but lazy: yields results in input order as
    /// they come, taking input only as far as it keeps a bounded number of
    /// items in the pool (so an endless input is fine). One task per item.
    pub fn imap<'a, E, A, I>(&self, entry: E, items: I) -> Result<IMap<'a, E::Output>>
    where
        E: Entry<Args = (A,)>,
        A: Serialize,
        I: IntoIterator<Item = A>,
        I::IntoIter: 'a,
    {
        self.imap_chunked(entry, items, 1)
    }

    /// [`imap`](Self::imap) with chunks of `chunksize` items.
    pub fn imap_chunked<'a, E, A, I>(
        &self,
        entry: E,
        items: I,
        chunksize: usize,
    ) -> Result<IMap<'a, E::Output>>
    where
        E: Entry<Args = (A,)>,
        A: Serialize,
        I: IntoIterator<Item = A>,
        I::IntoIter: 'a,
    {
        let _ = entry;
        let items = items.into_iter().map(|a| task::encode(&(a,)));
        self.run_imap(task::key::<E>()?, Box::new(items), chunksize, true)
    }

    /// Like [`imap`](Self::imap), but yields each result as soon as it
    /// comes, in any order.
    pub fn imap_unordered<'a, E, A, I>(&self, entry: E, items: I) -> Result<IMap<'a, E::Output>>
    where
        E: Entry<Args = (A,)>,
        A: Serialize,
        I: IntoIterator<Item = A>,
        I::IntoIter: 'a,
    {
        self.imap_unordered_chunked(entry, items, 1)
    }

    /// [`imap_unordered`](Self::imap_unordered) with chunks of `chunksize` items.
    pub fn imap_unordered_chunked<'a, E, A, I>(
        &self,
        entry: E,
        items: I,
        chunksize: usize,
    ) -> Result<IMap<'a, E::Output>>
    where
        E: Entry<Args = (A,)>,
        A: Serialize,
        I: IntoIterator<Item = A>,
        I::IntoIter: 'a,
    {
        let _ = entry;
        let items = items.into_iter().map(|a| task::encode(&(a,)));
        self.run_imap(task::key::<E>()?, Box::new(items), chunksize, false)
    }

    /// Runs one call in a worker and waits for its result.
    pub fn apply<E: Entry>(&self, entry: E, args: E::Args) -> Result<E::Output> {
        self.apply_async(entry, args)?.get()
    }

    /// Starts one call in a worker; the [`AsyncResult`] gives its result.
    pub fn apply_async<E: Entry>(&self, entry: E, args: E::Args) -> Result<AsyncResult<E::Output>> {
        let _ = entry;
        let key = task::key::<E>()?;
        let item = task::encode(&args)?;
        let sink = Sink::new(key, true, true);
        self.inner.submit(&sink, vec![(0, vec![item])], false)?;
        Ok(AsyncResult {
            sink,
            len: 1,
            collect: collect_one,
            _result: PhantomData,
        })
    }

    /// Takes no more tasks: later calls (`map`, `imap`, `apply_async`, …)
    /// fail, as in Python. Those submitted still run, and an
    /// [`imap`](Self::imap) made before `close` still takes and runs the
    /// rest of its input as it is iterated (Python's has queued all of it
    /// by then). Then [`join`](Self::join).
    pub fn close(&self) {
        self.inner.close();
    }

    /// After [`close`](Self::close): waits for every submitted task to be
    /// answered, then for the workers to exit. An error if the pool was not
    /// closed (or terminated) first ([`ErrorKind::InvalidInput`]), as in
    /// Python.
    ///
    /// An [`imap`](Self::imap) is lazy, so iterate it before `join`: the
    /// items it has not taken from its input by the time `join` returns
    /// fail (Python's `imap` takes its whole input at once).
    ///
    /// A replacement worker still in its initializer then has nothing to
    /// run, so it is killed rather than waited for (Python's `join` waits
    /// for it, for ever if its initializer never returns).
    pub fn join(&self) -> Result<()> {
        self.inner.finish()?;
        self.join_threads();
        Ok(())
    }

    /// Kills the workers at once (those still in their initializer too);
    /// tasks not answered yet fail. Waits until every worker is reaped.
    pub fn terminate(&self) {
        self.inner.terminate();
        self.join_threads();
    }

    fn join_threads(&self) {
        // Joined under the lock: a `terminate` or `join` on another thread
        // meanwhile waits for the same threads (every worker reaped)
        // rather than finding none left to join and returning at once.
        // The pool's threads never take this lock.
        let mut threads = lock(&self.threads);
        for thread in threads.drain(..) {
            let _ = thread.join();
        }
    }

    /// Encodes and submits the items chunk by chunk (so the workers start
    /// on the first while the rest is encoded), and takes the results in
    /// order as they come (so a failure returns without waiting for the
    /// items after it).
    fn run_map<T, R: DeserializeOwned>(
        &self,
        entry: &'static str,
        items: &[T],
        encode: impl Fn(&T) -> Result<Item>,
        chunksize: Option<usize>,
    ) -> Result<Vec<R>> {
        task::check_entry(entry)?;
        self.inner.admit()?;
        let len = items.len();
        if len == 0 {
            return Ok(Vec::new());
        }
        let sink = Sink::new(entry, false, true);
        let _cancel = Cancel {
            pool: &self.inner,
            sink: &sink,
        };
        self.submit_map(&sink, items, encode, chunksize)?;
        let mut out = Vec::with_capacity(len);
        let mut ready = Vec::new();
        while out.len() < len {
            let next = out.len() as u64;
            {
                let Some(mut state) = sink.wait(Wake::Index(next), None) else {
                    return Err(task::error(ErrorKind::Timeout, "map stopped waiting"));
                };
                let mut index = next;
                while let Some(result) = state.results.remove(index) {
                    ready.push(result);
                    index += 1;
                }
            }
            for result in ready.drain(..) {
                let index = out.len() as u64;
                out.push(decode_result(entry, index, result)?);
            }
        }
        Ok(out)
    }

    /// Submits a whole map, for an [`AsyncResult`] to collect.
    fn run_map_async<T, R: DeserializeOwned>(
        &self,
        entry: &'static str,
        items: &[T],
        encode: impl Fn(&T) -> Result<Item>,
    ) -> Result<AsyncResult<Vec<R>>> {
        task::check_entry(entry)?;
        self.inner.admit()?;
        let sink = Sink::new(entry, false, true);
        let cancel = Cancel {
            pool: &self.inner,
            sink: &sink,
        };
        // On an error, what was submitted is cancelled.
        self.submit_map(&sink, items, encode, None)?;
        // Submitted whole: it runs to its end whatever becomes of the result.
        std::mem::forget(cancel);
        Ok(AsyncResult {
            sink,
            len: items.len() as u64,
            collect: collect_all,
            _result: PhantomData,
        })
    }

    /// Encodes and submits `items` chunk by chunk, in batches, so the
    /// workers start on the first while the rest is encoded. A chunk is cut
    /// short before an item whose handles would take it over what one
    /// message carries ([`FDS_PER_MESSAGE`]): a chunk goes to its worker in
    /// one message, and each part is then a task of its own.
    fn submit_map<T>(
        &self,
        sink: &Arc<Sink>,
        items: &[T],
        encode: impl Fn(&T) -> Result<Item>,
        chunksize: Option<usize>,
    ) -> Result<()> {
        let entry = sink.entry;
        let len = items.len();
        let chunksize = chunksize
            .unwrap_or_else(|| len.div_ceil(4 * self.processes()))
            .max(1);
        let mut batch = Vec::new();
        let mut batched = 0;
        let mut chunk = Vec::new();
        let mut chunk_fds = 0;
        let mut first = 0;
        for (index, item) in items.iter().enumerate() {
            let item =
                encode(item).map_err(|e| task::copy_error(&e, &context(entry, index as u64)))?;
            if !chunk.is_empty()
                && (chunk.len() == chunksize || chunk_fds + item.fds.len() > FDS_PER_MESSAGE)
            {
                batched += chunk.len();
                batch.push((first as u64, std::mem::take(&mut chunk)));
                first = index;
                chunk_fds = 0;
                if batched >= SUBMIT_ITEMS {
                    self.inner.submit(sink, std::mem::take(&mut batch), true)?;
                    batched = 0;
                }
            }
            chunk_fds += item.fds.len();
            chunk.push(item);
        }
        if !chunk.is_empty() {
            batch.push((first as u64, chunk));
        }
        if !batch.is_empty() {
            self.inner.submit(sink, batch, true)?;
        }
        Ok(())
    }

    fn run_imap<'a, R: DeserializeOwned>(
        &self,
        entry: &'static str,
        input: Box<dyn Iterator<Item = Result<Item>> + 'a>,
        chunksize: usize,
        ordered: bool,
    ) -> Result<IMap<'a, R>> {
        task::check_entry(entry)?;
        self.inner.admit()?;
        let chunksize = chunksize.max(1);
        Ok(IMap {
            pool: Arc::clone(&self.inner),
            sink: Sink::new(entry, false, ordered),
            input,
            chunksize,
            // Saturating: a chunk size far beyond any input is a chunk of
            // all of it, not an overflow.
            window: u64::try_from(
                chunksize
                    .saturating_mul(IMAP_CHUNKS_PER_WORKER)
                    .saturating_mul(self.processes()),
            )
            .unwrap_or(u64::MAX),
            ordered,
            taken: 0,
            yielded: 0,
            exhausted: false,
            carry: None,
            _result: PhantomData,
        })
    }
}

impl Drop for Pool {
    /// Terminates the pool: kills and reaps every worker.
    fn drop(&mut self) {
        self.terminate();
    }
}

fn context(entry: &str, index: u64) -> String {
    format!("item {index} of `{entry}`")
}

fn decode_result<R: DeserializeOwned>(entry: &str, index: u64, result: Result<Item>) -> Result<R> {
    result.and_then(|item| {
        task::decode_item(item)
            .map_err(|e| task::copy_error(&e, &format!("{}: the result", context(entry, index))))
    })
}

/// Cancels what is left of a job when its caller stops waiting.
struct Cancel<'a> {
    pool: &'a Arc<scheduler::Pool>,
    sink: &'a Arc<Sink>,
}

impl Drop for Cancel<'_> {
    fn drop(&mut self) {
        lock(&self.sink.state).discard = true;
        self.pool.cancel(self.sink);
    }
}

/// The results of [`Pool::imap`] or [`Pool::imap_unordered`]: one
/// `Result<R, Error>` per input item.
///
/// Takes input only while fewer than `64 × processes` chunks are in the
/// pool or waiting to be yielded. Dropping it cancels the chunks not yet
/// sent to a worker. After [`Pool::close`] it goes on taking its input, up
/// to [`Pool::join`] (or [`Pool::terminate`]); items it takes after that
/// fail.
pub struct IMap<'a, R> {
    pool: Arc<scheduler::Pool>,
    sink: Arc<Sink>,
    input: Box<dyn Iterator<Item = Result<Item>> + 'a>,
    chunksize: usize,
    /// Most items taken from the input and not yet yielded.
    window: u64,
    ordered: bool,
    /// Items taken from the input (their results are indexed so).
    taken: u64,
    yielded: u64,
    exhausted: bool,
    /// An item taken from the input that starts the next chunk (it did
    /// not fit this one's handles).
    carry: Option<Item>,
    _result: PhantomData<fn() -> R>,
}

impl<R> fmt::Debug for IMap<'_, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IMap")
            .field("entry", &self.sink.entry)
            .field("ordered", &self.ordered)
            .field("taken", &self.taken)
            .field("yielded", &self.yielded)
            .finish_non_exhaustive()
    }
}

impl<R> IMap<'_, R> {
    /// Takes input until the window is full, and submits it.
    fn top_up(&mut self) {
        // Refill when half the window is free, in one submission.
        if self.exhausted || self.taken - self.yielded > self.window / 2 {
            return;
        }
        let mut chunks = Vec::new();
        let mut submitted = self.taken;
        while !self.exhausted && self.taken - self.yielded < self.window {
            let first = self.taken;
            // Grown as items come: the chunk size may be far beyond the
            // input (and beyond what memory holds).
            let mut chunk = Vec::new();
            let mut fds = 0;
            if let Some(item) = self.carry.take() {
                fds += item.fds.len();
                chunk.push(item);
            }
            let mut failed = None;
            while chunk.len() < self.chunksize {
                match self.input.next() {
                    // Cut short before the handles of the chunk, all told,
                    // would be more than one message carries (as `map`'s).
                    Some(Ok(item))
                        if !chunk.is_empty() && fds + item.fds.len() > FDS_PER_MESSAGE =>
                    {
                        self.carry = Some(item);
                        break;
                    }
                    Some(Ok(item)) => {
                        fds += item.fds.len();
                        chunk.push(item);
                    }
                    Some(Err(e)) => {
                        failed = Some(e);
                        break;
                    }
                    None => {
                        self.exhausted = true;
                        break;
                    }
                }
            }
            let n = chunk.len() as u64;
            if n > 0 {
                chunks.push((first, chunk));
            }
            self.taken += n;
            if let Some(e) = failed {
                // Submitted before the failed item's error is delivered, so
                // a submission error of theirs cannot land on its index.
                self.submit(std::mem::take(&mut chunks), submitted);
                let index = self.taken;
                let err = task::copy_error(&e, &context(self.sink.entry, index));
                self.sink.deliver(index, vec![Err(err)]);
                self.taken += 1;
                submitted = self.taken;
            }
        }
        self.submit(chunks, submitted);
    }

    /// Submits chunks (items `first..self.taken`); if the pool refuses
    /// them, that is each item's result.
    fn submit(&self, chunks: Vec<(u64, Vec<Item>)>, first: u64) {
        if chunks.is_empty() {
            return;
        }
        if let Err(e) = self.pool.submit(&self.sink, chunks, true) {
            let errors = (first..self.taken)
                .map(|i| Err(task::copy_error(&e, &context(self.sink.entry, i))))
                .collect();
            self.sink.deliver(first, errors);
        }
    }
}

impl<R: DeserializeOwned> IMap<'_, R> {
    /// Like [`next`](Iterator::next), but waits at most `timeout` for the
    /// next result (Python's `IMapIterator.next(timeout)`): an error of kind
    /// [`ErrorKind::Timeout`] if it has not come by then. Nothing is lost:
    /// the item keeps running, and the next call (of either kind) yields
    /// it. `None` once every result has been yielded.
    ///
    /// ```
    /// use std::time::Duration;
    /// use multiproc::{entry, process_entry, Pool};
    ///
    /// #[process_entry]
    /// fn square(x: u64) -> u64 { x * x }
    ///
    /// # fn main() -> multiproc::Result<()> {
    /// let pool = Pool::new(2)?;
    /// let mut it = pool.imap(entry!(square), 0..3u64)?;
    /// assert_eq!(it.next_timeout(Duration::from_secs(60)).unwrap()?, 0);
    /// let rest: Vec<u64> = it.collect::<Result<_, _>>()?;
    /// assert_eq!(rest, [1, 4]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<R>> {
        // A deadline too far off to represent is no deadline.
        let deadline = Instant::now().checked_add(timeout);
        match self.next_until(deadline)? {
            Ok(result) => Some(result),
            Err(Missed) => Some(Err(task::error(
                ErrorKind::Timeout,
                format!(
                    "the next result of `{}` did not come within {timeout:?} (it keeps running)",
                    self.sink.entry
                ),
            ))),
        }
    }

    /// The next result, waiting until `deadline` (`None`: for as long as
    /// it takes); `Err(Missed)` if the deadline passed first.
    fn next_until(
        &mut self,
        deadline: Option<Instant>,
    ) -> Option<std::result::Result<Result<R>, Missed>> {
        self.top_up();
        if self.yielded == self.taken {
            return None;
        }
        let wake = if self.ordered {
            Wake::Index(self.yielded)
        } else {
            Wake::Any
        };
        let (index, result) = {
            let Some(mut state) = self.sink.wait(wake, deadline) else {
                return Some(Err(Missed));
            };
            if self.ordered {
                let result = state.results.remove(self.yielded)?;
                (self.yielded, result)
            } else {
                state.results.pop_first()?
            }
        };
        self.yielded += 1;
        Some(Ok(decode_result(self.sink.entry, index, result)))
    }
}

/// A deadline passed before the result it waited for came.
struct Missed;

impl<R: DeserializeOwned> Iterator for IMap<'_, R> {
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        // Without a deadline, the wait ends only with a result.
        self.next_until(None).and_then(std::result::Result::ok)
    }
}

impl<R> Drop for IMap<'_, R> {
    fn drop(&mut self) {
        lock(&self.sink.state).discard = true;
        self.pool.cancel(&self.sink);
    }
}

/// The result of [`Pool::apply_async`], [`Pool::map_async`] or
/// [`Pool::starmap_async`], to collect later.
///
/// Dropping it does not stop the task (as in Python); its result is then
/// thrown away.
pub struct AsyncResult<R> {
    sink: Arc<Sink>,
    /// Items of the job: 1 for `apply_async`.
    len: u64,
    collect: Collect<R>,
    _result: PhantomData<fn() -> R>,
}

impl<R> fmt::Debug for AsyncResult<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncResult")
            .field("entry", &self.sink.entry)
            .finish_non_exhaustive()
    }
}

impl<R: DeserializeOwned> AsyncResult<R> {
    /// Waits for the result. Never waits for a dead worker: its death is
    /// this task's error.
    pub fn get(self) -> Result<R> {
        self.take(None)
    }

    /// Waits at most `timeout`: an error of kind [`ErrorKind::Timeout`] if
    /// the task has not finished by then. The task keeps running, and the
    /// result can be asked for again.
    ///
    /// Once it has returned the result (or the task's error), the result is
    /// taken: asking again, with `get` or `get_timeout`, is an
    /// [`ErrorKind::AlreadyTaken`] error. (Python's `get` may be repeated.)
    pub fn get_timeout(&self, timeout: Duration) -> Result<R> {
        self.take(Some(timeout))
    }

    /// Whether the result has come (the task finished or failed).
    pub fn ready(&self) -> bool {
        lock(&self.sink.state).pending == 0
    }

    /// Whether every task of the job returned, rather than failed (a
    /// panic, a dead worker…), once the result has come (Python's
    /// `successful`); `None` while it has not. A returned value that then
    /// fails to decode as `R` is found by [`get`](Self::get) only.
    pub fn successful(&self) -> Option<bool> {
        let state = lock(&self.sink.state);
        (state.pending == 0).then_some(!state.failed)
    }

    /// Waits until the result has come.
    pub fn wait(&self) {
        drop(self.sink.wait(Wake::AllDone, None));
    }

    /// Waits at most `timeout` for the result; whether it has come.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.sink
            .wait(Wake::AllDone, Instant::now().checked_add(timeout))
            .is_some()
    }

    fn take(&self, timeout: Option<Duration>) -> Result<R> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let Some(mut state) = self.sink.wait(Wake::AllDone, deadline) else {
            return Err(task::error(
                ErrorKind::Timeout,
                format!(
                    "`{}` did not finish within {:?} (it keeps running)",
                    self.sink.entry,
                    timeout.unwrap_or_default()
                ),
            ));
        };
        if std::mem::replace(&mut state.taken, true) {
            return Err(task::error(
                ErrorKind::AlreadyTaken,
                format!("the result of `{}` was already taken", self.sink.entry),
            ));
        }
        (self.collect)(self.sink.entry, &mut state.results, self.len)
    }
}

/// How an [`AsyncResult`] takes its job's results out as an `R`, given the
/// entry and the number of items (once: see `SinkState::taken`).
type Collect<R> = fn(&'static str, &mut Results<Result<Item>>, u64) -> Result<R>;

/// Item `index`'s result, which every answered job has until it is taken.
fn take_result(
    entry: &'static str,
    results: &mut Results<Result<Item>>,
    index: u64,
) -> Result<Item> {
    results.remove(index).unwrap_or_else(|| {
        Err(task::error(
            ErrorKind::AlreadyTaken,
            format!("the result of {} was already taken", context(entry, index)),
        ))
    })
}

/// An [`AsyncResult`]'s one call's result.
fn collect_one<R: DeserializeOwned>(
    entry: &'static str,
    results: &mut Results<Result<Item>>,
    _len: u64,
) -> Result<R> {
    decode_result(entry, 0, take_result(entry, results, 0))
}

/// A map's results in input order, or its first error in input order;
/// takes them all either way.
fn collect_all<R: DeserializeOwned>(
    entry: &'static str,
    results: &mut Results<Result<Item>>,
    len: u64,
) -> Result<Vec<R>> {
    let mut out = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    let mut failed = None;
    for index in 0..len {
        let result = take_result(entry, results, index);
        if failed.is_none() {
            match decode_result(entry, index, result) {
                Ok(value) => out.push(value),
                Err(e) => failed = Some(e),
            }
        }
    }
    failed.map_or(Ok(out), Err)
}

impl<R> Drop for AsyncResult<R> {
    fn drop(&mut self) {
        let mut state = lock(&self.sink.state);
        state.discard = true;
        state.results.clear();
    }
}
