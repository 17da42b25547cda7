//! Proxies of the manager's blocking objects: queue, locks, semaphores,
//! condition, event, barrier. A request that waits occupies only its own
//! connection (and server thread); other clients are served meanwhile.
//!
//! A client that dies holding a lock or permits gives them back: the
//! server releases whatever a connection held when it closes.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::client::{Handle, Uses, owner_token, permit_token, process_token};
use super::internals::{decode, encode_into};
use super::proto::{Fields, NO_PERMIT, Op, timeout_ms};
use crate::channel_error::{
    RecvError, RecvTimeoutError, SendError, SendTimeoutError, TryRecvError, TrySendError,
};
use crate::error::Error;
use crate::sync::{TryLockError, try_locked};

fn flag(f: &mut Fields<'_>) -> Result<bool, Error> {
    f.bool()
}

macro_rules! plain_proxy {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Serialize, Deserialize)]
        pub struct $name {
            h: Handle,
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($what, " proxy ({:?})"), self.h)
            }
        }

        impl $name {
            pub(crate) fn from_handle(h: Handle) -> Self {
                $name { h }
            }
        }
    };
}

/// A queue held by a [`Manager`](crate::Manager): Python's
/// `manager.Queue()`. Unbounded or bounded; `get` waits for an item. Its
/// methods and errors are those of a local [`Queue`](crate::Queue), so
/// code can move from one to the other; the errors convert into
/// [`Error`] for `?`.
///
/// ```
/// use multiproc::{TryRecvError, TrySendError};
/// # fn main() -> multiproc::Result<()> {
/// let manager = multiproc::Manager::start()?;
/// let q = manager.queue_bounded::<String>(1)?;
/// q.put("a".into())?;
/// assert!(matches!(q.try_put("b".into()), Err(TrySendError::Full(b)) if b == "b"));
/// assert_eq!(q.get()?, "a");
/// assert!(matches!(q.try_get(), Err(TryRecvError::Empty)));
/// # Ok(())
/// # }
/// ```
pub struct QueueProxy<T> {
    h: Handle,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for QueueProxy<T> {
    fn clone(&self) -> Self {
        QueueProxy {
            h: self.h.clone(),
            _t: PhantomData,
        }
    }
}

impl<T> fmt::Debug for QueueProxy<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "queue proxy ({:?})", self.h)
    }
}

impl<T> Serialize for QueueProxy<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.h.serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for QueueProxy<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(QueueProxy {
            h: Handle::deserialize(d)?,
            _t: PhantomData,
        })
    }
}

impl<T: Serialize + DeserializeOwned> QueueProxy<T> {
    pub(crate) fn from_handle(h: Handle) -> Self {
        QueueProxy { h, _t: PhantomData }
    }

    /// Puts `item` if there is room within `t` (`None`: waits for room);
    /// says whether it did.
    fn put_within(&self, item: &T, t: Option<Duration>) -> Result<bool, Error> {
        self.h.client.call_storing_if(
            Op::QueuePut,
            self.h.id,
            |f| {
                f.u64(timeout_ms(t));
                f.bytes_with(|buf| encode_into(item, buf)).map(drop)
            },
            flag,
        )
    }

    fn get_within(&self, t: Option<Duration>) -> Result<Option<T>, Error> {
        self.h.client.call_as(
            Uses::TAKING,
            Op::QueueGet,
            self.h.id,
            |f| {
                f.u64(timeout_ms(t));
                Ok(())
            },
            |f| f.opt()?.map(decode).transpose(),
        )
    }

    /// Puts `item`, waiting while the queue is full.
    ///
    /// # Errors
    /// [`SendError::Disconnected`] if the manager is gone;
    /// [`SendError::Failed`] if the item cannot be encoded, or the request
    /// fails otherwise. Either way the item is handed back.
    pub fn put(&self, item: T) -> Result<(), SendError<T>> {
        match self.put_within(&item, None) {
            Ok(_) => Ok(()),
            Err(e) if e.is_disconnected() => Err(SendError::Disconnected(item)),
            Err(e) => Err(SendError::Failed(item, e)),
        }
    }

    /// Puts `item` if there is room within `timeout`; otherwise hands it
    /// back in [`SendTimeoutError::Timeout`].
    pub fn put_timeout(&self, item: T, timeout: Duration) -> Result<(), SendTimeoutError<T>> {
        match self.put_within(&item, Some(timeout)) {
            Ok(true) => Ok(()),
            Ok(false) => Err(SendTimeoutError::Timeout(item)),
            Err(e) if e.is_disconnected() => Err(SendTimeoutError::Disconnected(item)),
            Err(e) => Err(SendTimeoutError::Failed(item, e)),
        }
    }

    /// Puts `item` if there is room now; otherwise hands it back in
    /// [`TrySendError::Full`].
    pub fn try_put(&self, item: T) -> Result<(), TrySendError<T>> {
        match self.put_within(&item, Some(Duration::ZERO)) {
            Ok(true) => Ok(()),
            Ok(false) => Err(TrySendError::Full(item)),
            Err(e) if e.is_disconnected() => Err(TrySendError::Disconnected(item)),
            Err(e) => Err(TrySendError::Failed(item, e)),
        }
    }

    /// Takes the oldest item, waiting for one.
    ///
    /// # Errors
    /// [`RecvError::Disconnected`] if the manager is gone;
    /// [`RecvError::Failed`] if the item does not decode as `T`, or the
    /// request fails otherwise.
    pub fn get(&self) -> Result<T, RecvError> {
        match self.get_within(None) {
            Ok(Some(item)) => Ok(item),
            Ok(None) => Err(RecvError::Failed(super::proto::malformed())),
            Err(e) if e.is_disconnected() => Err(RecvError::Disconnected),
            Err(e) => Err(RecvError::Failed(e)),
        }
    }

    /// Takes the oldest item if one comes within `timeout`;
    /// [`RecvTimeoutError::Timeout`] if none does.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        match self.get_within(Some(timeout)) {
            Ok(Some(item)) => Ok(item),
            Ok(None) => Err(RecvTimeoutError::Timeout),
            Err(e) if e.is_disconnected() => Err(RecvTimeoutError::Disconnected),
            Err(e) => Err(RecvTimeoutError::Failed(e)),
        }
    }

    /// Takes the oldest item if there is one now; [`TryRecvError::Empty`]
    /// if there is none.
    pub fn try_get(&self) -> Result<T, TryRecvError> {
        match self.get_within(Some(Duration::ZERO)) {
            Ok(Some(item)) => Ok(item),
            Ok(None) => Err(TryRecvError::Empty),
            Err(e) if e.is_disconnected() => Err(TryRecvError::Disconnected),
            Err(e) => Err(TryRecvError::Failed(e)),
        }
    }

    fn len_max(&self) -> Result<(usize, usize), Error> {
        self.h.client.call(
            Op::QueueLen,
            self.h.id,
            |_| Ok(()),
            |f| Ok((f.u64()? as usize, f.u64()? as usize)),
        )
    }

    /// The number of items (exact at the moment the server answered).
    pub fn len(&self) -> Result<usize, Error> {
        Ok(self.len_max()?.0)
    }

    /// Whether the queue is empty.
    pub fn is_empty(&self) -> Result<bool, Error> {
        Ok(self.len()? == 0)
    }

    /// Whether a bounded queue is full.
    pub fn is_full(&self) -> Result<bool, Error> {
        let (len, max) = self.len_max()?;
        Ok(max > 0 && len >= max)
    }
}

/// Holds a manager lock (of a [`LockProxy`], [`RLockProxy`] or
/// [`ConditionProxy`]); releases it when dropped.
///
/// Release it on the thread that took it: the owner of a manager lock is
/// the thread, so the guard is not `Send`. If the lock was taken from this
/// process meanwhile (its connection ended: a network failure), releasing
/// it is [`ErrorKind::NotOwner`](crate::ErrorKind::NotOwner) and leaves
/// the next holder's alone.
#[must_use = "the lock is released when the guard is dropped"]
pub struct ProxyLockGuard {
    h: Handle,
    token: u64,
    released: bool,
    _not_send: PhantomData<*const ()>,
}

impl fmt::Debug for ProxyLockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "lock guard ({:?})", self.h)
    }
}

impl ProxyLockGuard {
    /// Releases the lock now, reporting a failure (a dead server).
    pub fn unlock(mut self) -> Result<(), Error> {
        self.released = true;
        release(&self.h, self.token)
    }
}

impl Drop for ProxyLockGuard {
    fn drop(&mut self) {
        if !self.released {
            // A server that is gone has nothing to release.
            let _ = release(&self.h, self.token);
        }
    }
}

fn release(h: &Handle, token: u64) -> Result<(), Error> {
    h.client.call(
        Op::Release,
        h.id,
        |f| {
            f.u64(token);
            Ok(())
        },
        |_| Ok(()),
    )
}

fn acquire(h: &Handle, t: Option<Duration>) -> Result<Option<ProxyLockGuard>, Error> {
    let token = owner_token();
    let got = h.client.call(
        Op::Acquire,
        h.id,
        |f| {
            f.u64(token).u64(timeout_ms(t));
            Ok(())
        },
        flag,
    )?;
    Ok(got.then(|| ProxyLockGuard {
        h: h.clone(),
        token,
        released: false,
        _not_send: PhantomData,
    }))
}

fn forever(g: Option<ProxyLockGuard>) -> Result<ProxyLockGuard, Error> {
    g.ok_or_else(super::proto::malformed)
}

macro_rules! lock_methods {
    () => {
        /// Takes the lock, waiting as long as it takes.
        pub fn lock(&self) -> Result<ProxyLockGuard, Error> {
            forever(acquire(&self.h, None)?)
        }

        /// Takes the lock if it is free now:
        /// [`TryLockError::WouldBlock`] if
        /// it is held.
        pub fn try_lock(&self) -> Result<ProxyLockGuard, TryLockError> {
            try_locked(acquire(&self.h, Some(Duration::ZERO)))
        }

        /// Takes the lock if it comes free within `timeout`:
        /// [`TryLockError::WouldBlock`] if
        /// it does not.
        pub fn lock_timeout(&self, timeout: Duration) -> Result<ProxyLockGuard, TryLockError> {
            try_locked(acquire(&self.h, Some(timeout)))
        }
    };
}

plain_proxy!(
    /// A lock held by a [`Manager`](crate::Manager): Python's
    /// `manager.Lock()`. If the process holding it dies, the server
    /// releases it (the next `lock` just succeeds).
    ///
    /// ```
    /// # fn main() -> multiproc::Result<()> {
    /// let manager = multiproc::Manager::start()?;
    /// let lock = manager.lock()?;
    /// let guard = lock.lock()?;
    /// assert!(lock.try_lock().is_err());
    /// drop(guard);
    /// assert!(lock.try_lock().is_ok());
    /// # Ok(())
    /// # }
    /// ```
    LockProxy,
    "lock"
);

impl LockProxy {
    lock_methods!();
}

plain_proxy!(
    /// A reentrant lock held by a [`Manager`](crate::Manager): Python's
    /// `manager.RLock()`. The owner is the thread that took it; it may take
    /// it again, and must release it as often.
    ///
    /// ```
    /// # fn main() -> multiproc::Result<()> {
    /// let manager = multiproc::Manager::start()?;
    /// let lock = manager.rlock()?;
    /// let outer = lock.lock()?;
    /// let inner = lock.lock()?;   // same thread: no deadlock
    /// drop(inner);
    /// drop(outer);
    /// # Ok(())
    /// # }
    /// ```
    RLockProxy,
    "rlock"
);

impl RLockProxy {
    lock_methods!();
}

/// A permit of a [`SemaphoreProxy`]; given back when dropped (unless the
/// server took it back already, when the connection it was taken through
/// ended: a network failure).
#[must_use = "the permit is given back when the guard is dropped"]
pub struct ProxySemaphoreGuard {
    h: Handle,
    /// This permit's token, which the server knows it by.
    permit: u64,
    given: bool,
}

impl fmt::Debug for ProxySemaphoreGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "semaphore permit ({:?})", self.h)
    }
}

impl ProxySemaphoreGuard {
    /// Keeps the permit taken (until a `release`, or this process's death).
    ///
    /// The server gives back a process's permits when its connections
    /// close, so this process keeps them open until it ends, even once it
    /// holds no proxy of that manager.
    pub fn forget(mut self) {
        self.given = true;
        self.h.client.keep_for_life();
    }
}

impl Drop for ProxySemaphoreGuard {
    fn drop(&mut self) {
        if !self.given {
            let _ = sem_release(&self.h, self.permit);
        }
    }
}

/// Gives back `permit` (a guard's), or any permit ([`NO_PERMIT`]).
fn sem_release(h: &Handle, permit: u64) -> Result<(), Error> {
    h.client.call(
        Op::SemRelease,
        h.id,
        |f| {
            f.u64(process_token()).u64(permit);
            Ok(())
        },
        |_| Ok(()),
    )
}

plain_proxy!(
    /// A semaphore held by a [`Manager`](crate::Manager): Python's
    /// `manager.Semaphore(n)` and `manager.BoundedSemaphore(n)`. Permits
    /// held by a process that dies are given back.
    ///
    /// ```
    /// # fn main() -> multiproc::Result<()> {
    /// let manager = multiproc::Manager::start()?;
    /// let sem = manager.semaphore(1)?;
    /// let permit = sem.acquire()?;
    /// assert!(sem.try_acquire()?.is_none());
    /// drop(permit);
    /// assert_eq!(sem.value()?, 1);
    /// # Ok(())
    /// # }
    /// ```
    SemaphoreProxy,
    "semaphore"
);

impl SemaphoreProxy {
    fn acquire_within(&self, t: Option<Duration>) -> Result<Option<ProxySemaphoreGuard>, Error> {
        let permit = permit_token();
        let got = self.h.client.call(
            Op::SemAcquire,
            self.h.id,
            |f| {
                f.u64(process_token()).u64(permit).u64(timeout_ms(t));
                Ok(())
            },
            flag,
        )?;
        Ok(got.then(|| ProxySemaphoreGuard {
            h: self.h.clone(),
            permit,
            given: false,
        }))
    }

    /// Takes a permit, waiting for one.
    pub fn acquire(&self) -> Result<ProxySemaphoreGuard, Error> {
        self.acquire_within(None)?
            .ok_or_else(super::proto::malformed)
    }

    /// Takes a permit if one is free now.
    pub fn try_acquire(&self) -> Result<Option<ProxySemaphoreGuard>, Error> {
        self.acquire_within(Some(Duration::ZERO))
    }

    /// Takes a permit if one comes free within `timeout`.
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<Option<ProxySemaphoreGuard>, Error> {
        self.acquire_within(Some(timeout))
    }

    /// Adds a permit.
    ///
    /// # Errors
    /// [`ErrorKind::TooManyReleases`](crate::ErrorKind::TooManyReleases)
    /// above a bounded semaphore's initial value, or above `u64::MAX`
    /// permits.
    pub fn release(&self) -> Result<(), Error> {
        sem_release(&self.h, NO_PERMIT)
    }

    /// The number of free permits.
    pub fn value(&self) -> Result<u64, Error> {
        self.h
            .client
            .call(Op::SemValue, self.h.id, |_| Ok(()), |f| f.u64())
    }
}

plain_proxy!(
    /// A condition variable held by a [`Manager`](crate::Manager), with its
    /// own reentrant lock (Python's `manager.Condition()`): take the lock
    /// with [`lock`](Self::lock), then `wait` and `notify` while holding it.
    ///
    /// ```
    /// # fn main() -> multiproc::Result<()> {
    /// let manager = multiproc::Manager::start()?;
    /// let cond = manager.condition()?;
    /// let guard = cond.lock()?;
    /// let (guard, timed_out) = cond.wait_timeout(guard, std::time::Duration::from_millis(10))?;
    /// assert!(timed_out);
    /// cond.notify_all()?;
    /// drop(guard);
    /// # Ok(())
    /// # }
    /// ```
    ConditionProxy,
    "condition"
);

impl ConditionProxy {
    lock_methods!();

    fn wait_within(
        &self,
        guard: ProxyLockGuard,
        t: Option<Duration>,
    ) -> Result<(ProxyLockGuard, bool), Error> {
        let notified = self.h.client.call(
            Op::CondWait,
            self.h.id,
            |f| {
                f.u64(guard.token).u64(timeout_ms(t));
                Ok(())
            },
            flag,
        )?;
        Ok((guard, !notified))
    }

    /// Releases the lock, waits for a notification, takes the lock back.
    pub fn wait(&self, guard: ProxyLockGuard) -> Result<ProxyLockGuard, Error> {
        Ok(self.wait_within(guard, None)?.0)
    }

    /// Like [`wait`](Self::wait), for at most `timeout`; the flag is true
    /// if it timed out.
    pub fn wait_timeout(
        &self,
        guard: ProxyLockGuard,
        timeout: Duration,
    ) -> Result<(ProxyLockGuard, bool), Error> {
        self.wait_within(guard, Some(timeout))
    }

    /// Waits while `condition()` is true (checked with the lock held).
    pub fn wait_while(
        &self,
        mut guard: ProxyLockGuard,
        mut condition: impl FnMut() -> bool,
    ) -> Result<ProxyLockGuard, Error> {
        while condition() {
            guard = self.wait(guard)?;
        }
        Ok(guard)
    }

    /// Wakes up to `n` waiters. Call it holding the lock.
    pub fn notify(&self, n: usize) -> Result<(), Error> {
        let token = owner_token();
        self.h.client.call(
            Op::CondNotify,
            self.h.id,
            |f| {
                f.u64(token).u64(n as u64);
                Ok(())
            },
            |_| Ok(()),
        )
    }

    /// Wakes every waiter. Call it holding the lock.
    pub fn notify_all(&self) -> Result<(), Error> {
        self.notify(usize::MAX)
    }
}

plain_proxy!(
    /// An event held by a [`Manager`](crate::Manager): Python's
    /// `manager.Event()`.
    ///
    /// ```
    /// # fn main() -> multiproc::Result<()> {
    /// let manager = multiproc::Manager::start()?;
    /// let ev = manager.event()?;
    /// assert!(!ev.wait_timeout(std::time::Duration::from_millis(1))?);
    /// ev.set()?;
    /// assert!(ev.is_set()?);
    /// ev.wait()?;
    /// # Ok(())
    /// # }
    /// ```
    EventProxy,
    "event"
);

impl EventProxy {
    fn simple(&self, op: Op) -> Result<(), Error> {
        self.h.client.call(op, self.h.id, |_| Ok(()), |_| Ok(()))
    }

    /// Sets the flag, waking every waiter.
    pub fn set(&self) -> Result<(), Error> {
        self.simple(Op::EventSet)
    }

    /// Clears the flag.
    pub fn clear(&self) -> Result<(), Error> {
        self.simple(Op::EventClear)
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> Result<bool, Error> {
        self.h
            .client
            .call(Op::EventIsSet, self.h.id, |_| Ok(()), flag)
    }

    fn wait_within(&self, t: Option<Duration>) -> Result<bool, Error> {
        self.h.client.call(
            Op::EventWait,
            self.h.id,
            |f| {
                f.u64(timeout_ms(t));
                Ok(())
            },
            flag,
        )
    }

    /// Waits until the flag is set.
    pub fn wait(&self) -> Result<(), Error> {
        self.wait_within(None).map(drop)
    }

    /// Waits up to `timeout`; true if the flag is set.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool, Error> {
        self.wait_within(Some(timeout))
    }
}

plain_proxy!(
    /// A barrier held by a [`Manager`](crate::Manager): Python's
    /// `manager.Barrier(n)`. A waiter that times out or dies breaks it.
    ///
    /// ```
    /// # fn main() -> multiproc::Result<()> {
    /// let manager = multiproc::Manager::start()?;
    /// let b = manager.barrier(1)?;
    /// assert_eq!(b.wait()?, 0);
    /// b.abort()?;
    /// assert!(b.wait().unwrap_err().kind() == multiproc::ErrorKind::BrokenBarrier);
    /// # Ok(())
    /// # }
    /// ```
    BarrierProxy,
    "barrier"
);

/// A count the server sent, as a `usize` (malformed if it does not fit).
fn usize_field(f: &mut Fields<'_>) -> Result<usize, Error> {
    usize::try_from(f.u64()?).map_err(|_| super::proto::malformed())
}

impl BarrierProxy {
    fn wait_within(&self, t: Option<Duration>) -> Result<usize, Error> {
        self.h.client.call(
            Op::BarrierWait,
            self.h.id,
            |f| {
                f.u64(timeout_ms(t));
                Ok(())
            },
            usize_field,
        )
    }

    /// Waits for every party; returns this one's arrival index.
    ///
    /// # Errors
    /// [`ErrorKind::BrokenBarrier`](crate::ErrorKind::BrokenBarrier) if the
    /// barrier is or becomes broken.
    pub fn wait(&self) -> Result<usize, Error> {
        self.wait_within(None)
    }

    /// Like [`wait`](Self::wait), for at most `timeout`. A timeout breaks
    /// the barrier (as in Python), and this waiter, like the others, gets
    /// [`ErrorKind::BrokenBarrier`](crate::ErrorKind::BrokenBarrier), as
    /// Python's `BrokenBarrierError`. (A [`Barrier`](crate::Barrier)'s
    /// waiter that times out gets [`ErrorKind::Timeout`](crate::ErrorKind::Timeout)
    /// instead.)
    pub fn wait_timeout(&self, timeout: Duration) -> Result<usize, Error> {
        self.wait_within(Some(timeout))
    }

    /// Breaks the barrier: current and later waiters fail.
    pub fn abort(&self) -> Result<(), Error> {
        self.h
            .client
            .call(Op::BarrierAbort, self.h.id, |_| Ok(()), |_| Ok(()))
    }

    /// Mends the barrier; current waiters fail.
    pub fn reset(&self) -> Result<(), Error> {
        self.h
            .client
            .call(Op::BarrierReset, self.h.id, |_| Ok(()), |_| Ok(()))
    }

    /// How many parties are waiting.
    pub fn n_waiting(&self) -> Result<usize, Error> {
        self.h
            .client
            .call(Op::BarrierWaiting, self.h.id, |_| Ok(()), usize_field)
    }

    /// Whether the barrier is broken.
    pub fn is_broken(&self) -> Result<bool, Error> {
        self.h
            .client
            .call(Op::BarrierBroken, self.h.id, |_| Ok(()), flag)
    }
}
