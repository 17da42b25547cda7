//! [`Semaphore`] and [`BoundedSemaphore`]: Python's `multiprocessing`
//! semaphores.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::{Acquire, Relaxed, SeqCst};
use std::time::Duration;

use super::{RegionKind, WORDS_ONLY_LEN, region_handle};
use crate::error::{Error, ErrorKind};
use crate::sys::futex;
use crate::sys::lock_word::Deadline;
use crate::sys::shm::SharedRegion;

const SEMAPHORE: RegionKind = RegionKind::new(b"mpSM", "multiproc::Semaphore");
const BOUNDED: RegionKind = RegionKind::new(b"mpBS", "multiproc::BoundedSemaphore");
/// The permits (the futex word).
const COUNT: usize = 24;
/// How many processes may be asleep on `COUNT` (so `release` can skip the wake).
const SLEEPERS: usize = 28;
/// The most permits there may be (`u32::MAX` for a plain semaphore).
const MAX: usize = 32;

/// The shared words of a semaphore.
#[derive(Clone, Copy)]
struct Sem<'a> {
    count: &'a AtomicU32,
    sleepers: &'a AtomicU32,
    max: &'a AtomicU32,
}

impl<'a> Sem<'a> {
    fn of(region: &'a SharedRegion) -> Sem<'a> {
        Sem {
            count: region.atomic_u32(COUNT),
            sleepers: region.atomic_u32(SLEEPERS),
            max: region.atomic_u32(MAX),
        }
    }

    fn create(kind: RegionKind, value: u32, max: u32) -> Result<Arc<SharedRegion>, Error> {
        super::create(kind, WORDS_ONLY_LEN, 0, |region| {
            let sem = Sem::of(region);
            sem.count.store(value, Relaxed);
            sem.max.store(max, Relaxed);
        })
    }

    fn try_take(self) -> bool {
        let mut count = self.count.load(Relaxed);
        while count > 0 {
            match self
                .count
                .compare_exchange_weak(count, count - 1, Acquire, Relaxed)
            {
                Ok(_) => return true,
                Err(now) => count = now,
            }
        }
        false
    }

    fn acquire(self, wait: Deadline) -> Option<SemaphoreGuard<'a>> {
        loop {
            if self.try_take() {
                return Some(SemaphoreGuard { sem: self });
            }
            let left = wait.left();
            if left == Some(Duration::ZERO) {
                return None;
            }
            // Registering before the last look pairs with `release`, which
            // adds a permit before looking for sleepers: one of the two
            // sees the other.
            self.sleepers.fetch_add(1, SeqCst);
            if self.count.load(SeqCst) == 0 {
                futex::wait(self.count, 0, left);
            }
            self.sleepers.fetch_sub(1, SeqCst);
        }
    }

    /// Adds a permit; `Err` (changing nothing) at the maximum.
    fn release(self) -> Result<(), u32> {
        let max = self.max.load(Relaxed);
        let mut count = self.count.load(Relaxed);
        loop {
            if count >= max {
                return Err(max);
            }
            match self
                .count
                .compare_exchange_weak(count, count + 1, SeqCst, Relaxed)
            {
                Ok(_) => break,
                Err(now) => count = now,
            }
        }
        if self.sleepers.load(SeqCst) > 0 {
            futex::wake(self.count, 1);
        }
        Ok(())
    }
}

fn too_many_releases(kind: RegionKind, max: u32) -> Error {
    Error::new(
        ErrorKind::TooManyReleases,
        format!("{} released too many times (its limit is {max})", kind.name),
    )
}

/// A counting semaphore shared by processes (Python's
/// `multiprocessing.Semaphore`).
///
/// [`acquire`](Self::acquire) takes a permit and returns a guard that gives
/// it back on drop; [`SemaphoreGuard::forget`] keeps it taken, and
/// [`release`](Self::release) adds one, from any process.
///
/// ```
/// use std::time::Duration;
/// use multiproc::{process_entry, spawn, Semaphore};
///
/// #[process_entry]
/// fn hand_over(permits: Semaphore) -> bool {
///     permits.release().is_ok()
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let permits = Semaphore::new(0)?;
/// assert!(permits.try_acquire().is_none());
/// let child = spawn!(hand_over, permits.clone())?;
/// let permit = permits.acquire_timeout(Duration::from_secs(10));
/// assert!(child.join()?);
/// permit.expect("the child released a permit").forget(); // keep it taken…
/// assert_eq!(permits.value(), 0);
/// permits.release()?; // …and give it back by hand
/// assert_eq!(permits.value(), 1);
/// # Ok(())
/// # }
/// ```
///
/// # Caveats
/// A permit has no owner: a process that dies holding one does not give it
/// back (as in Python). Use a [`Lock`](crate::Lock) where owner death must be
/// noticed.
pub struct Semaphore {
    region: Arc<SharedRegion>,
}

/// The methods `Semaphore` and `BoundedSemaphore` share word for word.
macro_rules! permit_methods {
    () => {
        fn sem(&self) -> Sem<'_> {
            Sem::of(&self.region)
        }

        /// Takes a permit, blocking until there is one.
        pub fn acquire(&self) -> SemaphoreGuard<'_> {
            loop {
                if let Some(guard) = self.sem().acquire(Deadline::Never) {
                    return guard;
                }
            }
        }

        /// Takes a permit if there is one now.
        pub fn try_acquire(&self) -> Option<SemaphoreGuard<'_>> {
            self.sem().acquire(Deadline::Now)
        }

        /// Takes a permit, waiting at most `timeout` for one.
        pub fn acquire_timeout(&self, timeout: Duration) -> Option<SemaphoreGuard<'_>> {
            self.sem().acquire(Deadline::after(timeout))
        }

        /// The number of free permits (a snapshot; Python's `get_value`).
        pub fn value(&self) -> u32 {
            self.sem().count.load(Relaxed)
        }
    };
}

region_handle!(Semaphore, SEMAPHORE, Some(WORDS_ONLY_LEN));

impl Semaphore {
    /// A semaphore with `value` permits.
    pub fn new(value: u32) -> Result<Semaphore, Error> {
        Ok(Semaphore {
            region: Sem::create(SEMAPHORE, value, u32::MAX)?,
        })
    }

    permit_methods!();

    /// Adds a permit, waking a waiter if any.
    ///
    /// # Errors
    /// [`TooManyReleases`](crate::ErrorKind::TooManyReleases) if the count
    /// would pass `u32::MAX`.
    pub fn release(&self) -> Result<(), Error> {
        self.sem()
            .release()
            .map_err(|max| too_many_releases(SEMAPHORE, max))
    }
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Semaphore")
            .field("value", &self.value())
            .finish()
    }
}

/// A semaphore that refuses to be released above its initial value (Python's
/// `multiprocessing.BoundedSemaphore`).
///
/// ```
/// use multiproc::{BoundedSemaphore, ErrorKind};
///
/// # fn main() -> multiproc::Result<()> {
/// let slots = BoundedSemaphore::new(2)?;
/// let a = slots.acquire();
/// let b = slots.acquire();
/// assert!(slots.try_acquire().is_none());
/// drop((a, b));
/// let err = slots.release().unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::TooManyReleases);
/// # Ok(())
/// # }
/// ```
///
/// # Caveats
/// As for [`Semaphore`]: a process that dies holding a permit does not give
/// it back.
pub struct BoundedSemaphore {
    region: Arc<SharedRegion>,
}

region_handle!(BoundedSemaphore, BOUNDED, Some(WORDS_ONLY_LEN));

impl BoundedSemaphore {
    /// A semaphore with `value` permits, which is also its maximum.
    pub fn new(value: u32) -> Result<BoundedSemaphore, Error> {
        Ok(BoundedSemaphore {
            region: Sem::create(BOUNDED, value, value)?,
        })
    }

    permit_methods!();

    /// Adds a permit, waking a waiter if any.
    ///
    /// # Errors
    /// [`TooManyReleases`](crate::ErrorKind::TooManyReleases) if that would
    /// make more permits than the initial value (Python's `ValueError`).
    pub fn release(&self) -> Result<(), Error> {
        self.sem()
            .release()
            .map_err(|max| too_many_releases(BOUNDED, max))
    }

    /// The initial value, which is also the maximum.
    pub fn max_value(&self) -> u32 {
        self.sem().max.load(Relaxed)
    }
}

impl fmt::Debug for BoundedSemaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundedSemaphore")
            .field("value", &self.value())
            .field("max_value", &self.max_value())
            .finish()
    }
}

/// A permit taken from a [`Semaphore`] or [`BoundedSemaphore`]; given back
/// when dropped.
#[must_use = "the permit is given back as soon as the guard is dropped"]
pub struct SemaphoreGuard<'a> {
    sem: Sem<'a>,
}

impl SemaphoreGuard<'_> {
    /// Keeps the permit taken; add one back later with `release`.
    pub fn forget(self) {
        std::mem::forget(self);
    }
}

impl Drop for SemaphoreGuard<'_> {
    fn drop(&mut self) {
        // A bounded semaphore already released up to its maximum by hand
        // has no room for this permit: it is simply not given back.
        let _ = self.sem.release();
    }
}

impl fmt::Debug for SemaphoreGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SemaphoreGuard").finish_non_exhaustive()
    }
}
