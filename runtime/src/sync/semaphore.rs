//! [`Semaphore`] and [`BoundedSemaphore`]: Python's `multiprocessing`
//! semaphores.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::{Duration, Instant};

use super::{RegionKind, WORDS_ONLY_LEN, region_handle};
use crate::error::{Error, ErrorKind};
use crate::sys::futex::{self, CHECK_PERIOD};
use crate::sys::lock_word::Deadline;
use crate::sys::owner;
use crate::sys::shm::SharedRegion;

const SEMAPHORE: RegionKind = RegionKind::new(b"mpSM", "multiproc::Semaphore");
const BOUNDED: RegionKind = RegionKind::new(b"mpBS", "multiproc::BoundedSemaphore");
/// The permits (the futex word).
const COUNT: usize = 24;
/// How many processes may be asleep on `COUNT` (so `release` can skip the wake).
const SLEEPERS: usize = 28;
/// The most permits there may be (`u32::MAX` for a plain semaphore).
const MAX: usize = 32;
/// The holder table: one slot per process holding permits, its owner tag
/// (0: free) and then how many permits it holds, so that the permits of a
/// process that dies come back.
const HOLDERS: usize = WORDS_ONLY_LEN;
const HOLDER_LEN: usize = 16;
const HOLDER_SLOTS: usize = 64;
const ATOMICS_LEN: usize = HOLDERS + HOLDER_LEN * HOLDER_SLOTS;
/// A slot's tag while a waiter gives a dead holder's permits back.
const RECLAIMING: u64 = u64::MAX;

/// The shared words of a semaphore.
#[derive(Clone, Copy)]
struct Sem<'a> {
    region: &'a SharedRegion,
    count: &'a AtomicU32,
    sleepers: &'a AtomicU32,
    max: &'a AtomicU32,
}

impl<'a> Sem<'a> {
    fn of(region: &'a SharedRegion) -> Sem<'a> {
        Sem {
            region,
            count: region.atomic_u32(COUNT),
            sleepers: region.atomic_u32(SLEEPERS),
            max: region.atomic_u32(MAX),
        }
    }

    fn create(kind: RegionKind, value: u32, max: u32) -> Result<Arc<SharedRegion>, Error> {
        super::create(kind, ATOMICS_LEN, 0, |region| {
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
        let mut checked = Instant::now();
        loop {
            if self.try_take() {
                let holder = self.hold();
                return Some(SemaphoreGuard { sem: self, holder });
            }
            let left = wait.left();
            if left == Some(Duration::ZERO) {
                // A last look, which first gives back the permits of holders
                // that died (as a lock's last look checks its owner): a
                // `try_acquire`, or waits shorter than a check period, would
                // otherwise never see them.
                self.reclaim_from_the_dead();
                if self.try_take() {
                    let holder = self.hold();
                    return Some(SemaphoreGuard { sem: self, holder });
                }
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
            if checked.elapsed() >= CHECK_PERIOD {
                self.reclaim_from_the_dead();
                checked = Instant::now();
            }
        }
    }

    fn holder_tag(self, slot: usize) -> &'a AtomicU64 {
        self.region.atomic_u64(HOLDERS + HOLDER_LEN * slot)
    }

    fn holder_count(self, slot: usize) -> &'a AtomicU32 {
        self.region.atomic_u32(HOLDERS + HOLDER_LEN * slot + 8)
    }

    /// Counts a permit just taken as this process's; returns its slot, or
    /// `None` when the table is full (the permit then goes untracked, as
    /// all are in Python). A process killed between taking the permit and
    /// counting it loses that one permit.
    fn hold(self) -> Option<usize> {
        let me = owner::me().tag;
        let slot = (0..HOLDER_SLOTS)
            .find(|&slot| self.holder_tag(slot).load(Relaxed) == me)
            .or_else(|| {
                (0..HOLDER_SLOTS).find(|&slot| {
                    self.holder_tag(slot)
                        .compare_exchange(0, me, Relaxed, Relaxed)
                        .is_ok()
                })
            })?;
        self.holder_count(slot).fetch_add(1, Relaxed);
        Some(slot)
    }

    /// The permit counted in `slot` leaves this process (given back, or
    /// kept by `forget` for someone to `release`).
    fn unhold(self, slot: Option<usize>) {
        if let Some(slot) = slot {
            self.holder_count(slot).fetch_sub(1, Relaxed);
        }
    }

    /// Gives back the permits of holders that died (and frees the slots of
    /// those that died holding none). Only a dead holder's slot is touched,
    /// and only by the waiter that claimed it, so no count is taken twice.
    #[cold]
    fn reclaim_from_the_dead(self) {
        for slot in 0..HOLDER_SLOTS {
            let tag = self.holder_tag(slot).load(Relaxed);
            if tag == 0 || tag == RECLAIMING || !owner::is_dead(owner::tag_pid(tag), tag) {
                continue;
            }
            if self
                .holder_tag(slot)
                .compare_exchange(tag, RECLAIMING, Acquire, Relaxed)
                .is_err()
            {
                continue;
            }
            let held = self.holder_count(slot).swap(0, SeqCst);
            for _ in 0..held {
                // A bounded semaphore never passes its maximum.
                if self.release().is_err() {
                    break;
                }
            }
            self.holder_tag(slot).store(0, Release);
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
/// - A process killed while holding permits (guards not yet dropped) gives
///   them back: a waiter notices within about 50 ms, and a `try_acquire` or
///   a timed acquire looks before it gives up (beyond Python, which loses
///   them). The holders of one semaphore are counted in 64 slots, one
///   per process; the permits of processes past that are not tracked.
/// - A permit kept with [`SemaphoreGuard::forget`] belongs to no process
///   until someone calls `release`: it is lost if nobody does.
/// - A process killed in the instant between taking a permit and counting
///   it as its own (or between uncounting it and giving it back) loses it.
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

region_handle!(Semaphore, SEMAPHORE, Some(ATOMICS_LEN));

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
/// As for [`Semaphore`]: a process killed holding permits gives them back,
/// never past the maximum.
pub struct BoundedSemaphore {
    region: Arc<SharedRegion>,
}

region_handle!(BoundedSemaphore, BOUNDED, Some(ATOMICS_LEN));

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
    /// The holder slot that counts this permit as this process's.
    holder: Option<usize>,
}

impl SemaphoreGuard<'_> {
    /// Keeps the permit taken; add one back later with `release`, from this
    /// process or another. A forgotten permit is no longer this process's:
    /// it does not come back if this process dies.
    pub fn forget(self) {
        self.sem.unhold(self.holder);
        std::mem::forget(self);
    }
}

impl Drop for SemaphoreGuard<'_> {
    fn drop(&mut self) {
        // Not this process's any more before it is back: a death between
        // the two loses it rather than returning it twice.
        self.sem.unhold(self.holder);
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
