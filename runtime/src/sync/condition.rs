//! [`Condition`]: Python's `multiprocessing.Condition`, owning its lock
//! the way std's `Mutex` + `Condvar` pair does.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::{Relaxed, Release};
use std::time::Duration;

use super::TryLockError;
use super::{RegionKind, WORDS_ONLY_LEN, owner_died, region_handle};
use crate::error::Error;
use crate::sys::futex;
use crate::sys::lock_word::Deadline;
use crate::sys::lock_word::{Acquisition, RawLock};
use crate::sys::owner;
use crate::sys::shm::SharedRegion;

const KIND: RegionKind = RegionKind::new(b"mpCV", "multiproc::Condition");
/// Bumped by every notify; waiters sleep on it.
const SEQ: usize = 24;
/// Waiters not yet notified.
const WAITERS: usize = 28;
/// Notified waiters that have not yet taken their wake-up.
const TOKENS: usize = 32;

/// A condition variable shared by processes, with its own lock (Python's
/// `multiprocessing.Condition`, shaped like std's `Mutex` + `Condvar`).
///
/// Take the lock with [`lock`](Self::lock), then [`wait`](Self::wait) with
/// the guard (the lock is released while waiting and held again on return),
/// or change the shared state and [`notify`](Self::notify) while holding it.
/// `notify(n)` wakes at most `n` waiters, as Python's does; use
/// [`wait_while`](Self::wait_while) to wait for a predicate.
///
/// ```
/// use std::time::Duration;
/// use multiproc::{process_entry, spawn, Condition, Value};
///
/// #[process_entry]
/// fn produce(cond: Condition, item: Value<u32>) {
///     let _guard = cond.lock().expect("lock");
///     item.store(42);
///     cond.notify_all();
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let cond = Condition::new()?;
/// let item = Value::new(0u32)?;
/// let guard = cond.lock()?;
/// let child = spawn!(produce, cond.clone(), item.clone())?;
/// let (guard, timed_out) =
///     cond.wait_while_timeout(guard, Duration::from_secs(10), || item.load() == 0);
/// assert!(!timed_out);
/// assert_eq!(item.load(), 42);
/// drop(guard);
/// child.join()?;
/// # Ok(())
/// # }
/// ```
///
/// # Caveats
/// - The lock behaves as a [`Lock`](crate::Lock), owner death included: if
///   its holder dies, the next `lock` returns an
///   [`OwnerDied`](crate::ErrorKind::OwnerDied) error and leaves it free. A
///   `wait` that takes it back from a dead holder just has it: the wait
///   ends as a spurious wake-up, with no error.
/// - A waiter killed while waiting keeps its place in the count of waiters,
///   so a later `notify(n)` may spend one of its `n` wake-ups on it (Python
///   has the same weakness), and that wake-up may later go to a waiter that
///   a notify after it left out: one spurious wake-up, which
///   [`wait_while`](Self::wait_while) absorbs.
pub struct Condition {
    region: Arc<SharedRegion>,
}

region_handle!(Condition, KIND, Some(WORDS_ONLY_LEN));

impl Condition {
    /// A new condition, with its lock free.
    pub fn new() -> Result<Condition, Error> {
        let region = super::create(KIND, WORDS_ONLY_LEN, 0, |_| {})?;
        Ok(Condition { region })
    }

    fn raw(&self) -> RawLock<'_> {
        RawLock::of(&self.region)
    }

    fn word(&self, offset: usize) -> &AtomicU32 {
        self.region.atomic_u32(offset)
    }

    fn acquire(&self, wait: Deadline) -> Result<Option<ConditionGuard<'_>>, Error> {
        let raw = self.raw();
        match raw.acquire(wait) {
            Acquisition::Acquired => Ok(Some(ConditionGuard { cond: self, raw })),
            Acquisition::TimedOut => Ok(None),
            Acquisition::OwnerDied(pid) => Err(owner_died("condition's lock", pid)),
        }
    }

    /// Takes the condition's lock.
    ///
    /// # Errors
    /// [`OwnerDied`](crate::ErrorKind::OwnerDied) if its holder died; the
    /// lock is then free.
    pub fn lock(&self) -> Result<ConditionGuard<'_>, Error> {
        loop {
            if let Some(guard) = self.acquire(Deadline::Never)? {
                return Ok(guard);
            }
        }
    }

    /// Takes the lock if it is free: [`TryLockError::WouldBlock`] if a live process
    /// holds it; [`TryLockError::Failed`] with
    /// [`OwnerDied`](crate::ErrorKind::OwnerDied) if its holder died.
    pub fn try_lock(&self) -> Result<ConditionGuard<'_>, TryLockError> {
        super::try_locked(self.acquire(Deadline::Now))
    }

    /// Takes the lock, giving up after `timeout`:
    /// [`TryLockError::WouldBlock`].
    pub fn lock_timeout(&self, timeout: Duration) -> Result<ConditionGuard<'_>, TryLockError> {
        super::try_locked(self.acquire(Deadline::after(timeout)))
    }

    /// Releases the lock, sleeps until notified, takes the lock again.
    ///
    /// As with any condition variable, a wait may also end without a
    /// notify (a spurious wake-up), so check what you wait for in a loop,
    /// or use [`wait_while`](Self::wait_while). One such case: the lock's
    /// holder died while this waiter took the lock back; the waiter then
    /// has the lock (freed by the death), and no error, since a condition
    /// holds no data of its own that the dead holder could have left
    /// half-written.
    ///
    /// # Panics
    /// If `guard` belongs to another condition.
    pub fn wait<'a>(&'a self, guard: ConditionGuard<'a>) -> ConditionGuard<'a> {
        self.wait_until(guard, Deadline::Never).0
    }

    /// Like [`wait`](Self::wait), for at most `timeout`; the flag is `true`
    /// if it timed out rather than being woken.
    pub fn wait_timeout<'a>(
        &'a self,
        guard: ConditionGuard<'a>,
        timeout: Duration,
    ) -> (ConditionGuard<'a>, bool) {
        self.wait_until(guard, Deadline::after(timeout))
    }

    /// Waits as long as `condition` returns `true` (checked with the lock
    /// held, first before any waiting).
    pub fn wait_while<'a>(
        &'a self,
        mut guard: ConditionGuard<'a>,
        mut condition: impl FnMut() -> bool,
    ) -> ConditionGuard<'a> {
        while condition() {
            guard = self.wait(guard);
        }
        guard
    }

    /// Like [`wait_while`](Self::wait_while), for at most `timeout`; the flag
    /// is `true` if it timed out with `condition` still `true`.
    pub fn wait_while_timeout<'a>(
        &'a self,
        mut guard: ConditionGuard<'a>,
        timeout: Duration,
        mut condition: impl FnMut() -> bool,
    ) -> (ConditionGuard<'a>, bool) {
        let wait = Deadline::after(timeout);
        loop {
            if !condition() {
                return (guard, false);
            }
            if wait.left() == Some(Duration::ZERO) {
                return (guard, true);
            }
            guard = self.wait_until(guard, wait).0;
        }
    }

    fn wait_until<'a>(
        &'a self,
        guard: ConditionGuard<'a>,
        wait: Deadline,
    ) -> (ConditionGuard<'a>, bool) {
        assert!(
            guard.cond.region.same_object(&self.region),
            "Condition::wait called with the guard of another condition"
        );
        let raw = guard.raw;
        // From here the lock is handled by hand.
        std::mem::forget(guard);
        let (seq, waiters, tokens) = (self.word(SEQ), self.word(WAITERS), self.word(TOKENS));
        waiters.fetch_add(1, Relaxed);
        // The wake-ups handed out so far are for waiters that came before
        // us: we may take one only once a notify has come since we arrived
        // (one whose count included us). Without this, a waiter that looks
        // early (a sleep cut short, or a timeout) would take the wake-up of
        // one notified before it arrived, which would then sleep on.
        let arrived = seq.load(Relaxed);
        loop {
            // Read under the lock, so a notify after this point changes it.
            let seen = seq.load(Relaxed);
            raw.release();
            match wait.left() {
                Some(Duration::ZERO) => {}
                left => {
                    futex::wait(seq, seen, left);
                }
            }
            let mut died = false;
            loop {
                match raw.acquire(Deadline::Never) {
                    Acquisition::Acquired => break,
                    // Left free by the detection: take it.
                    Acquisition::OwnerDied(_) => died = true,
                    Acquisition::TimedOut => {}
                }
            }
            let notified = seq.load(Relaxed) != arrived && take_one(tokens);
            if died {
                // A wake-up of its own (spurious, if not notified): the
                // counts say this waiter is gone, whatever comes next.
                if !notified {
                    take_one(waiters);
                }
                let timed_out = !notified && wait.left() == Some(Duration::ZERO);
                return (ConditionGuard { cond: self, raw }, timed_out);
            }
            if notified {
                return (ConditionGuard { cond: self, raw }, false);
            }
            if wait.left() == Some(Duration::ZERO) {
                take_one(waiters);
                return (ConditionGuard { cond: self, raw }, true);
            }
            // Woken without a wake-up of our own (another waiter took it).
        }
    }

    /// Wakes at most `n` waiters. Call it while holding the lock.
    ///
    /// # Panics
    /// If this process does not hold the condition's lock (Python raises
    /// `RuntimeError`).
    pub fn notify(&self, n: usize) {
        assert!(
            self.raw().holder() == Some(owner::me().pid),
            "Condition::notify called without holding the condition's lock"
        );
        let waiters = self.word(WAITERS);
        let waiting = waiters.load(Relaxed);
        let woken = waiting.min(u32::try_from(n).unwrap_or(u32::MAX));
        if woken == 0 {
            return;
        }
        waiters.store(waiting - woken, Relaxed);
        self.word(TOKENS).fetch_add(woken, Relaxed);
        let seq = self.word(SEQ);
        seq.fetch_add(1, Release);
        futex::wake(seq, woken);
    }

    /// Wakes every waiter. Call it while holding the lock.
    ///
    /// # Panics
    /// As [`notify`](Self::notify).
    pub fn notify_all(&self) {
        self.notify(usize::MAX);
    }
}

/// Decrements `word` if it is positive; says whether it did. Only called
/// with the lock held.
fn take_one(word: &AtomicU32) -> bool {
    let value = word.load(Relaxed);
    if value == 0 {
        return false;
    }
    word.store(value - 1, Relaxed);
    true
}

impl fmt::Debug for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Condition")
            .field("holder_pid", &self.raw().holder())
            .finish()
    }
}

/// Holds a [`Condition`]'s lock; releases it when dropped. Give it to
/// [`Condition::wait`] to wait.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ConditionGuard<'a> {
    cond: &'a Condition,
    raw: RawLock<'a>,
}

impl Drop for ConditionGuard<'_> {
    fn drop(&mut self) {
        self.raw.release();
    }
}

impl fmt::Debug for ConditionGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConditionGuard").finish_non_exhaustive()
    }
}
