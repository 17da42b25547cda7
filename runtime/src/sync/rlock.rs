//! [`RLock`]: Python's `multiprocessing.RLock`.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::TryLockError;
use super::{RegionKind, WORDS_ONLY_LEN, owner_died, region_handle};
use crate::error::{Error, ErrorKind};
use crate::sys::lock_word::Deadline;
use crate::sys::lock_word::{Acquisition, RawLock};
use crate::sys::owner;
use crate::sys::shm::SharedRegion;

const KIND: RegionKind = RegionKind::new(b"mpRL", "multiproc::RLock");
/// The kernel thread id of the owning thread (written by the owner only).
const OWNER_TID: usize = 24;
/// How many times the owner holds it (touched by the owner only).
const COUNT: usize = 28;

/// A re-entrant lock shared by processes (Python's `multiprocessing.RLock`):
/// the thread holding it may take it again, and must release it as many
/// times.
///
/// The owner is a thread of a process (pid and thread id). Guards release
/// one level on drop; Python-style code can instead
/// [`forget`](RLockGuard::forget) the guard and call
/// [`release`](RLock::release), which fails for any thread but the owner.
///
/// ```
/// use multiproc::{process_entry, spawn, ErrorKind, RLock};
///
/// #[process_entry]
/// fn try_release(lock: RLock) -> bool {
///     lock.release().is_ok()
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let lock = RLock::new()?;
/// let outer = lock.lock()?;
/// let inner = lock.lock()?; // same thread: no deadlock
/// // Another process does not own it, and cannot release it.
/// assert!(!spawn!(try_release, lock.clone())?.join()?);
/// drop(inner);
/// outer.forget();
/// lock.release()?; // the last level
/// assert_eq!(lock.release().unwrap_err().kind(), ErrorKind::NotOwner);
/// # Ok(())
/// # }
/// ```
///
/// # Caveats
/// - Owner death is handled as for [`Lock`](crate::Lock): when the owning
///   process dies, the next acquirer gets an
///   [`OwnerDied`](crate::ErrorKind::OwnerDied) error and the lock is left
///   free, whatever its recursion count was.
/// - The death of the owning *thread* while its process lives on is not
///   detected (the lock stays held, as in Python).
pub struct RLock {
    region: Arc<SharedRegion>,
}

region_handle!(RLock, KIND, Some(WORDS_ONLY_LEN));

impl RLock {
    /// A new, unlocked re-entrant lock.
    pub fn new() -> Result<RLock, Error> {
        let region = super::create(KIND, WORDS_ONLY_LEN, 0, |_| {})?;
        Ok(RLock { region })
    }

    fn raw(&self) -> RawLock<'_> {
        RawLock::of(&self.region)
    }

    fn owner_tid(&self) -> &AtomicU32 {
        self.region.atomic_u32(OWNER_TID)
    }

    fn count(&self) -> &AtomicU32 {
        self.region.atomic_u32(COUNT)
    }

    /// Whether the calling thread holds the lock.
    pub fn is_owned(&self) -> bool {
        // Only the owner writes its own thread id, and clears it before
        // unlocking, so finding ours means we hold it.
        self.owner_tid().load(Relaxed) == owner::tid()
            && self.raw().holder() == Some(owner::me().pid)
    }

    fn acquire(&self, wait: Deadline) -> Result<Option<RLockGuard<'_>>, Error> {
        if self.is_owned() {
            let count = self.count().load(Relaxed);
            let count = count
                .checked_add(1)
                .unwrap_or_else(|| panic!("RLock recursion count overflow"));
            self.count().store(count, Relaxed);
            return Ok(Some(self.guard()));
        }
        match self.raw().acquire(wait) {
            Acquisition::Acquired => {
                self.count().store(1, Relaxed);
                self.owner_tid().store(owner::tid(), Relaxed);
                Ok(Some(self.guard()))
            }
            Acquisition::TimedOut => Ok(None),
            Acquisition::OwnerDied(pid) => Err(owner_died("re-entrant lock", pid)),
        }
    }

    fn guard(&self) -> RLockGuard<'_> {
        RLockGuard {
            lock: self,
            _not_send: PhantomData,
        }
    }

    /// Takes the lock (again, if this thread holds it), blocking while
    /// another thread or process holds it.
    ///
    /// # Errors
    /// [`OwnerDied`](crate::ErrorKind::OwnerDied) if the holding process
    /// died; the lock is then free.
    pub fn lock(&self) -> Result<RLockGuard<'_>, Error> {
        loop {
            if let Some(guard) = self.acquire(Deadline::Never)? {
                return Ok(guard);
            }
        }
    }

    /// Takes the lock if it is free or already this thread's: [`TryLockError::WouldBlock`]
    /// if another live owner holds it.
    pub fn try_lock(&self) -> Result<RLockGuard<'_>, TryLockError> {
        super::try_locked(self.acquire(Deadline::Now))
    }

    /// Like [`lock`](Self::lock), giving up after `timeout`:
    /// [`TryLockError::WouldBlock`].
    pub fn lock_timeout(&self, timeout: Duration) -> Result<RLockGuard<'_>, TryLockError> {
        super::try_locked(self.acquire(Deadline::after(timeout)))
    }

    /// Releases one level of a hold taken with a guard that was
    /// [`forget`](RLockGuard::forget)-ten (Python's `RLock.release`).
    ///
    /// # Errors
    /// [`NotOwner`](crate::ErrorKind::NotOwner) if the calling thread does
    /// not hold the lock.
    pub fn release(&self) -> Result<(), Error> {
        if !self.is_owned() {
            return Err(Error::new(
                ErrorKind::NotOwner,
                "cannot release a re-entrant lock the calling thread does not hold",
            ));
        }
        self.release_one();
        Ok(())
    }

    fn release_one(&self) {
        let count = self.count().load(Relaxed);
        if count > 1 {
            self.count().store(count - 1, Relaxed);
        } else {
            self.count().store(0, Relaxed);
            self.owner_tid().store(0, Relaxed);
            self.raw().release();
        }
    }
}

impl fmt::Debug for RLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RLock")
            .field("holder_pid", &self.raw().holder())
            .field("owned_by_this_thread", &self.is_owned())
            .finish()
    }
}

/// One level of hold on an [`RLock`]; releases that level when dropped.
///
/// Not `Send`: the hold belongs to the thread that took it.
#[must_use = "the level is released as soon as the guard is dropped"]
pub struct RLockGuard<'a> {
    lock: &'a RLock,
    _not_send: PhantomData<*const ()>,
}

impl RLockGuard<'_> {
    /// Keeps the level held past the guard; release it with
    /// [`RLock::release`].
    pub fn forget(self) {
        std::mem::forget(self);
    }
}

impl Drop for RLockGuard<'_> {
    fn drop(&mut self) {
        // Already released by hand (`RLock::release`): nothing left to do.
        if self.lock.is_owned() {
            self.lock.release_one();
        }
    }
}

impl fmt::Debug for RLockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RLockGuard").finish_non_exhaustive()
    }
}
