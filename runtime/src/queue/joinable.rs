//! [`JoinableQueue`]: a [`Queue`] that counts unfinished items.

use std::fmt;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, SeqCst};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::layout::{ALL_DONE, UNFINISHED};
use super::records::Inner;
use super::{Queue, checked_capacity};
use crate::channel_error::{
    RecvError, RecvTimeoutError, SendError, SendTimeoutError, TryRecvError, TrySendError,
};
use crate::error::{Error, ErrorKind};
use crate::sys::futex;
use crate::sys::lock_word::Deadline;

/// A [`Queue`] that also counts unfinished items, as Python's
/// `JoinableQueue`: every `get` is matched by a [`task_done`](Self::task_done)
/// and [`join`](Self::join) waits until all are. (An item lost with a
/// killed process is never done: see [`Queue`]'s caveats.)
///
/// ```
/// use multiproc::{process_entry, spawn, JoinableQueue};
///
/// #[process_entry]
/// fn worker(q: JoinableQueue<u32>) -> u32 {
///     let mut sum = 0;
///     while let Ok(n) = q.get() {
///         sum += n;
///         q.task_done().unwrap();
///     }
///     sum
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let q = JoinableQueue::new()?;
/// let child = spawn!(worker, q.clone())?;
/// for n in 1..=10 {
///     q.put(n).unwrap();
/// }
/// q.join()?;          // every item was processed
/// q.shutdown();       // lets the worker's `get` report `Disconnected`
/// assert_eq!(child.join()?, 55);
/// # Ok(())
/// # }
/// ```
pub struct JoinableQueue<T> {
    queue: Queue<T>,
}

impl<T> Clone for JoinableQueue<T> {
    fn clone(&self) -> JoinableQueue<T> {
        JoinableQueue {
            queue: self.queue.clone(),
        }
    }
}

impl<T> fmt::Debug for JoinableQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinableQueue")
            .field("queue", &self.queue)
            .field(
                "unfinished",
                &self.queue.inner.word(UNFINISHED).load(Relaxed),
            )
            .finish()
    }
}

impl<T> Serialize for JoinableQueue<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.queue.serialize(serializer)
    }
}

impl<'de, T> Deserialize<'de> for JoinableQueue<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<JoinableQueue<T>, D::Error> {
        Ok(JoinableQueue {
            queue: Queue::deserialize(deserializer)?,
        })
    }
}

/// Wakes every [`join`](JoinableQueue::join) of `inner`: its count of
/// unfinished items has just reached zero (a `task_done`, or the last
/// uncounting of items lost with a backlog).
pub(super) fn all_done(inner: &Inner) {
    let done = inner.word(ALL_DONE);
    done.fetch_add(1, SeqCst);
    futex::wake_all(done);
}

impl<T: Serialize + DeserializeOwned> JoinableQueue<T> {
    /// An unbounded joinable queue.
    pub fn new() -> Result<JoinableQueue<T>, Error> {
        Ok(JoinableQueue {
            queue: Queue::create(0, true)?,
        })
    }

    /// A joinable queue of at most `capacity` items. A capacity of 0 is an
    /// [`InvalidInput`](crate::ErrorKind::InvalidInput) error, as for
    /// [`Queue::bounded`].
    pub fn bounded(capacity: usize) -> Result<JoinableQueue<T>, Error> {
        Ok(JoinableQueue {
            queue: Queue::create(checked_capacity(capacity)?, true)?,
        })
    }
}

/// Putting and getting: `T: 'static`, as for [`Queue`]'s.
impl<T: Serialize + DeserializeOwned + 'static> JoinableQueue<T> {
    /// Puts an item, counted as an unfinished task; see [`Queue::put`].
    pub fn put(&self, item: T) -> Result<(), SendError<T>> {
        self.queue.put(item)
    }

    /// Like [`put`](Self::put) for at most `timeout`; see [`Queue::put_timeout`].
    pub fn put_timeout(&self, item: T, timeout: Duration) -> Result<(), SendTimeoutError<T>> {
        self.queue.put_timeout(item, timeout)
    }

    /// Puts an item if there is room now; see [`Queue::try_put`].
    pub fn try_put(&self, item: T) -> Result<(), TrySendError<T>> {
        self.queue.try_put(item)
    }

    /// Takes the next item, waiting for one; see [`Queue::get`]. Call
    /// [`task_done`](Self::task_done) once it is processed.
    pub fn get(&self) -> Result<T, RecvError> {
        self.queue.get()
    }

    /// Like [`get`](Self::get) for at most `timeout`; see [`Queue::get_timeout`].
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.queue.get_timeout(timeout)
    }

    /// Takes an item if one is there now; see [`Queue::try_get`].
    pub fn try_get(&self) -> Result<T, TryRecvError> {
        self.queue.try_get()
    }
}

impl<T: Serialize + DeserializeOwned> JoinableQueue<T> {
    /// How many items are in the queue (a snapshot); see [`Queue::len`].
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether the queue is empty (a snapshot).
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Whether a bounded queue is full (a snapshot).
    pub fn is_full(&self) -> bool {
        self.queue.is_full()
    }

    /// Shuts the queue down for every handle; see [`Queue::shutdown`].
    pub fn shutdown(&self) {
        self.queue.shutdown()
    }

    /// Whether the queue was shut down; see [`Queue::is_shutdown`].
    pub fn is_shutdown(&self) -> bool {
        self.queue.is_shutdown()
    }

    /// This handle puts no more; see [`Queue::close`].
    pub fn close(&self) {
        self.queue.close()
    }

    /// Whether this handle can no longer put; see [`Queue::is_closed`].
    pub fn is_closed(&self) -> bool {
        self.queue.is_closed()
    }

    /// Marks one item taken with `get` as processed. An error if called more
    /// times than items were put.
    pub fn task_done(&self) -> Result<(), Error> {
        let word = self.queue.inner.word(UNFINISHED);
        let mut current = word.load(Acquire);
        loop {
            if current == 0 {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    "task_done() called more times than there were items",
                ));
            }
            match word.compare_exchange_weak(current, current - 1, AcqRel, Acquire) {
                Ok(_) => break,
                Err(now) => current = now,
            }
        }
        if current == 1 {
            all_done(&self.queue.inner);
        }
        Ok(())
    }

    /// Waits until every item put has been marked done.
    pub fn join(&self) -> Result<(), Error> {
        self.join_wait(Deadline::Never).map(drop)
    }

    /// Like [`join`](Self::join) for at most `timeout`; `Ok(false)` if tasks
    /// are still unfinished then.
    pub fn join_timeout(&self, timeout: Duration) -> Result<bool, Error> {
        self.join_wait(Deadline::after(timeout))
    }

    fn join_wait(&self, wait: Deadline) -> Result<bool, Error> {
        let inner = &self.queue.inner;
        loop {
            let seq = inner.word(ALL_DONE).load(SeqCst);
            if inner.word(UNFINISHED).load(SeqCst) == 0 {
                return Ok(true);
            }
            let left = wait.left();
            if left == Some(Duration::ZERO) {
                return Ok(false);
            }
            futex::wait(inner.word(ALL_DONE), seq, left);
        }
    }
}
