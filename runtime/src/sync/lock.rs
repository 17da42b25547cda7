//! [`Lock`]: Python's `multiprocessing.Lock`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::TryLockError;
use super::{RegionKind, WORDS_ONLY_LEN, owner_died, region_handle};
use crate::error::Error;
use crate::sys::lock_word::Deadline;
use crate::sys::lock_word::{Acquisition, RawLock};
use crate::sys::shm::SharedRegion;

const KIND: RegionKind = RegionKind::new(b"mpLK", "multiproc::Lock");

/// A mutual-exclusion lock shared by processes (Python's
/// `multiprocessing.Lock`), held through a guard.
///
/// Clone it, or pass it to a child as an entry argument: every copy, in any
/// process, is the same lock. The lock belongs to the *process* that took
/// it; it is not recursive (see [`RLock`](crate::RLock)).
///
/// ```
/// use multiproc::{process_entry, spawn, Lock};
///
/// #[process_entry]
/// fn is_free(lock: Lock) -> bool {
///     lock.try_lock().is_ok()
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let lock = Lock::new()?;
/// let held = lock.lock()?;
/// assert!(!spawn!(is_free, lock.clone())?.join()?);
/// drop(held);
/// assert!(spawn!(is_free, lock.clone())?.join()?);
/// # Ok(())
/// # }
/// ```
///
/// A holder that dies does not block the others for ever:
///
/// ```
/// use multiproc::{process_entry, spawn, ErrorKind, Lock};
///
/// #[process_entry]
/// fn take_and_vanish(lock: Lock) {
///     std::mem::forget(lock.lock().expect("lock"));
///     // The process exits still holding the lock.
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let lock = Lock::new()?;
/// let child = spawn!(take_and_vanish, lock.clone())?;
/// let pid = child.pid();
/// child.join()?;
/// let err = lock.lock().unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::OwnerDied);
/// assert!(err.to_string().contains(&pid.to_string()));
/// let _recovered = lock.lock()?; // the lock was left free
/// # Ok(())
/// # }
/// ```
///
/// # Caveats
/// - **Owner death.** If the process holding the lock dies (even by
///   `SIGKILL`), the next process to acquire it gets an `Err` of kind
///   [`OwnerDied`](crate::ErrorKind::OwnerDied) naming the dead pid, and the
///   lock is left **free**: lock again to take it, after restoring whatever
///   state the dead owner may have left half-changed. Waiters notice within
///   about 50 ms; [`try_lock`](Self::try_lock) and a timed-out
///   [`lock_timeout`](Self::lock_timeout) check the owner at once.
///   A process counts as dead once it has exited, including as an unreaped
///   zombie; a pid reused by a new process is told apart by its start time.
/// - Locking twice from the same process without unlocking deadlocks, as
///   in Python (use `lock_timeout` or an [`RLock`](crate::RLock)).
/// - The lock lives in a small memfd-backed shared mapping (one page), freed
///   when the last handle in the last process is dropped.
pub struct Lock {
    region: Arc<SharedRegion>,
}

region_handle!(Lock, KIND, Some(WORDS_ONLY_LEN));

impl Lock {
    /// A new, unlocked lock.
    pub fn new() -> Result<Lock, Error> {
        let region = super::create(KIND, WORDS_ONLY_LEN, 0, |_| {})?;
        Ok(Lock { region })
    }

    fn raw(&self) -> RawLock<'_> {
        RawLock::of(&self.region)
    }

    fn acquire(&self, wait: Deadline) -> Result<Option<LockGuard<'_>>, Error> {
        let raw = self.raw();
        match raw.acquire(wait) {
            Acquisition::Acquired => Ok(Some(LockGuard { raw })),
            Acquisition::TimedOut => Ok(None),
            Acquisition::OwnerDied(pid) => Err(owner_died("lock", pid)),
        }
    }

    /// Blocks until the lock is free, takes it, and returns a guard that
    /// releases it on drop.
    ///
    /// # Errors
    /// [`OwnerDied`](crate::ErrorKind::OwnerDied) if the holder died; the
    /// lock is then free (see the caveats above).
    pub fn lock(&self) -> Result<LockGuard<'_>, Error> {
        loop {
            if let Some(guard) = self.acquire(Deadline::Never)? {
                return Ok(guard);
            }
        }
    }

    /// Takes the lock if it is free: [`TryLockError::WouldBlock`] if a live process
    /// holds it; [`TryLockError::Failed`] with
    /// [`OwnerDied`](crate::ErrorKind::OwnerDied) if its holder died.
    ///
    pub fn try_lock(&self) -> Result<LockGuard<'_>, TryLockError> {
        super::try_locked(self.acquire(Deadline::Now))
    }

    /// Like [`lock`](Self::lock), giving up after `timeout`:
    /// [`TryLockError::WouldBlock`].
    pub fn lock_timeout(&self, timeout: Duration) -> Result<LockGuard<'_>, TryLockError> {
        super::try_locked(self.acquire(Deadline::after(timeout)))
    }

    /// Whether some process holds the lock (a snapshot).
    pub fn is_locked(&self) -> bool {
        self.raw().holder().is_some()
    }
}

impl fmt::Debug for Lock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lock")
            .field("holder_pid", &self.raw().holder())
            .finish()
    }
}

/// Holds a [`Lock`]; releases it when dropped.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard<'a> {
    raw: RawLock<'a>,
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        self.raw.release();
    }
}

impl fmt::Debug for LockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard").finish_non_exhaustive()
    }
}
