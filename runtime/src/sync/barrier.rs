//! [`Barrier`]: Python's `multiprocessing.Barrier` (`threading.Barrier`'s
//! algorithm), which also survives a party that dies while waiting.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering::{Relaxed, Release};
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::{Duration, Instant};

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{RegionKind, WORDS_ONLY_LEN};
use crate::error::{Error, ErrorKind};
use crate::sys::futex;
use crate::sys::futex::CHECK_PERIOD;
use crate::sys::lock_word::Deadline;
use crate::sys::lock_word::{Acquisition, RawLock};
use crate::sys::owner;
use crate::sys::shm::SharedRegion;

const KIND: RegionKind = RegionKind::new(b"mpBR", "multiproc::Barrier");
/// The number of parties (fixed at creation).
const PARTIES: usize = 4;
/// Bumped by every state change; sleepers wait on it.
const SEQ: usize = 24;
const STATE: usize = 28;
/// Parties inside `wait` (arrived, or released but not yet gone).
const COUNT: usize = 32;
/// One owner tag per party inside `wait`, indexed by arrival (0: empty);
/// then as many for parties inside `wait` that wait for the previous round
/// to finish before they can arrive ("entering"), so that a death there is
/// seen too.
const SLOTS: usize = WORDS_ONLY_LEN;
const MAX_PARTIES: usize = 1 << 16;

const FILLING: u32 = 0;
const DRAINING: u32 = 1;
const RESETTING: u32 = 2;
const BROKEN: u32 = 3;

/// A barrier for a fixed number of parties across processes (Python's
/// `multiprocessing.Barrier`): each [`wait`](Self::wait) blocks until that
/// many have called it, then all go on.
///
/// ```
/// use multiproc::{process_entry, spawn, Barrier};
///
/// #[process_entry]
/// fn arrive(barrier: Barrier) -> Option<usize> {
///     barrier.wait().ok()
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let barrier = Barrier::new(3)?;
/// let a = spawn!(arrive, barrier.clone())?;
/// let b = spawn!(arrive, barrier.clone())?;
/// let mine = barrier.wait()?;
/// let mut indices = vec![mine, a.join()?.unwrap(), b.join()?.unwrap()];
/// indices.sort();
/// assert_eq!(indices, [0, 1, 2]); // arrival order
/// # Ok(())
/// # }
/// ```
///
/// # Caveats
/// - Broken state, as in Python: [`abort`](Self::abort), a timed-out
///   [`wait_timeout`](Self::wait_timeout) or a [`reset`](Self::reset) while
///   parties wait makes every waiter return an
///   [`BrokenBarrier`](crate::ErrorKind::BrokenBarrier) error, and later
///   waits fail at once until `reset`.
/// - A process killed inside `wait` breaks the barrier (where Python's
///   would hang the others): the waiters get `BrokenBarrier` within about
///   50 ms (they check the processes inside `wait` that often), and a last
///   arrival never counts a dead party as come. A process killed between
///   two waits is one the barrier cannot know was coming: the others wait
///   for it as for any late party (use `wait_timeout`).
/// - There is no `action` callable (closures cannot travel between processes).
pub struct Barrier {
    region: Arc<SharedRegion>,
    parties: usize,
}

impl Barrier {
    /// A barrier for `parties` parties (at least 1, at most 65536).
    pub fn new(parties: usize) -> Result<Barrier, Error> {
        if parties == 0 || parties > MAX_PARTIES {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("a barrier needs 1 to {MAX_PARTIES} parties, not {parties}"),
            ));
        }
        let region = super::create(KIND, SLOTS + 16 * parties, 0, |region| {
            region.atomic_u32(PARTIES).store(parties as u32, Relaxed);
        })?;
        Ok(Barrier { region, parties })
    }

    /// The number of parties.
    pub fn parties(&self) -> usize {
        self.parties
    }

    fn word(&self, offset: usize) -> &AtomicU32 {
        self.region.atomic_u32(offset)
    }

    fn slot(&self, index: usize) -> &AtomicU64 {
        self.region.atomic_u64(SLOTS + 8 * index)
    }

    fn entering_slot(&self, index: usize) -> &AtomicU64 {
        self.region.atomic_u64(SLOTS + 8 * (self.parties + index))
    }

    /// Takes the internal lock. If a process died inside it, the counts may
    /// be half-updated: the barrier is broken and recounted from the slots.
    fn lock_state(&self) -> State<'_> {
        let raw = RawLock::of(&self.region);
        let mut owner_died = false;
        loop {
            match raw.acquire(Deadline::Never) {
                Acquisition::Acquired => break,
                Acquisition::OwnerDied(_) => owner_died = true,
                Acquisition::TimedOut => {}
            }
        }
        let state = State { barrier: self, raw };
        if owner_died {
            state.set_state(BROKEN);
            let live = (0..self.parties)
                .filter(|&i| self.slot(i).load(Relaxed) != 0)
                .count();
            state.set_count(live as u32);
            state.reap_dead();
            state.notify_all();
        }
        state
    }

    /// Waits until all parties have called `wait`; returns this party's
    /// arrival index (0 for the first, `parties - 1` for the last).
    ///
    /// # Errors
    /// [`BrokenBarrier`](crate::ErrorKind::BrokenBarrier) if the barrier is
    /// broken, or becomes broken (abort, reset, another party's timeout, a
    /// waiting process's death) while waiting.
    pub fn wait(&self) -> Result<usize, Error> {
        self.wait_until(Deadline::Never)
    }

    /// Like [`wait`](Self::wait), for at most `timeout`. A timeout breaks
    /// the barrier (as in Python) and returns a
    /// [`Timeout`](crate::ErrorKind::Timeout) error (where Python raises
    /// `BrokenBarrierError`, and a [`BarrierProxy`](crate::BarrierProxy)
    /// returns [`BrokenBarrier`](crate::ErrorKind::BrokenBarrier)); the
    /// other waiters get [`BrokenBarrier`](crate::ErrorKind::BrokenBarrier).
    /// A waiter that times out before it could arrive, while the previous
    /// round was still leaving, breaks nothing.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<usize, Error> {
        self.wait_until(Deadline::after(timeout))
    }

    fn wait_until(&self, wait: Deadline) -> Result<usize, Error> {
        let me = owner::me();
        let mut state = self.lock_state();
        let mut checked = Instant::now();
        // Let the previous round finish leaving (or a reset complete),
        // counted among the entering meanwhile.
        let entering = Entering::new(self, me.tag, state.state() != FILLING);
        loop {
            match state.state() {
                FILLING => break,
                BROKEN => return Err(broken()),
                _ if wait.left() == Some(Duration::ZERO) => {
                    return Err(Error::new(
                        ErrorKind::Timeout,
                        "timed out before the barrier finished its previous round",
                    ));
                }
                _ => {
                    state = self.sleep(state, wait);
                    if checked.elapsed() >= CHECK_PERIOD {
                        // A party that died before leaving the last round
                        // will not come to this one.
                        if state.reap_dead() {
                            state.break_barrier();
                        }
                        checked = Instant::now();
                    }
                }
            }
        }
        entering.done();
        let index = state.count() as usize;
        if index >= self.parties {
            // Only a corrupted count gets here.
            state.set_state(BROKEN);
            state.notify_all();
            return Err(broken());
        }
        self.slot(index).store(me.tag, Relaxed);
        state.set_count(index as u32 + 1);
        // A party killed while waiting is not one that came: the barrier
        // breaks rather than trips (the others may not have looked yet).
        if index + 1 == self.parties && state.reap_dead() {
            state.break_barrier();
            state.leave(index);
            return Err(broken());
        }
        if index + 1 == self.parties {
            state.set_state(DRAINING);
            state.notify_all();
        } else {
            while state.state() == FILLING {
                if wait.left() == Some(Duration::ZERO) {
                    state.break_barrier();
                    state.leave(index);
                    return Err(Error::new(
                        ErrorKind::Timeout,
                        "timed out waiting at the barrier, which is now broken",
                    ));
                }
                state = self.sleep(state, wait);
                if checked.elapsed() >= CHECK_PERIOD {
                    if state.state() == FILLING && state.reap_dead() {
                        state.break_barrier();
                    }
                    checked = Instant::now();
                }
            }
            if state.state() != DRAINING {
                state.leave(index);
                return Err(broken());
            }
        }
        state.leave(index);
        Ok(index)
    }

    /// Releases the lock, sleeps until a state change or for a check
    /// period, takes the lock again.
    fn sleep<'a>(&'a self, state: State<'a>, wait: Deadline) -> State<'a> {
        let seq = self.word(SEQ);
        let seen = seq.load(Relaxed);
        drop(state);
        let period = wait
            .left()
            .map_or(CHECK_PERIOD, |left| left.min(CHECK_PERIOD));
        if !period.is_zero() {
            futex::wait(seq, seen, Some(period));
        }
        self.lock_state()
    }

    /// Breaks the barrier: current and future waiters fail until
    /// [`reset`](Self::reset).
    pub fn abort(&self) {
        self.lock_state().break_barrier();
    }

    /// Returns the barrier to its initial state. Parties waiting now fail
    /// with [`BrokenBarrier`](crate::ErrorKind::BrokenBarrier); the barrier
    /// is usable again once they have left.
    pub fn reset(&self) {
        let state = self.lock_state();
        if state.count() > 0 {
            if matches!(state.state(), FILLING | BROKEN) {
                state.set_state(RESETTING);
            }
        } else {
            state.set_state(FILLING);
        }
        state.notify_all();
    }

    /// How many parties are waiting for the barrier to fill.
    pub fn n_waiting(&self) -> usize {
        let state = self.lock_state();
        if state.state() == FILLING {
            state.count() as usize
        } else {
            0
        }
    }

    /// Whether the barrier is broken.
    pub fn is_broken(&self) -> bool {
        self.lock_state().state() == BROKEN
    }
}

fn broken() -> Error {
    Error::new(
        ErrorKind::BrokenBarrier,
        "the barrier was aborted, reset, timed out, or lost a waiting process",
    )
}

/// The barrier's internal lock, held.
struct State<'a> {
    barrier: &'a Barrier,
    raw: RawLock<'a>,
}

impl State<'_> {
    fn state(&self) -> u32 {
        self.barrier.word(STATE).load(Relaxed)
    }

    fn set_state(&self, state: u32) {
        self.barrier.word(STATE).store(state, Relaxed);
    }

    fn count(&self) -> u32 {
        self.barrier.word(COUNT).load(Relaxed)
    }

    fn set_count(&self, count: u32) {
        self.barrier.word(COUNT).store(count, Relaxed);
    }

    fn notify_all(&self) {
        let seq = self.barrier.word(SEQ);
        seq.fetch_add(1, Release);
        futex::wake_all(seq);
    }

    fn break_barrier(&self) {
        self.set_state(BROKEN);
        self.notify_all();
    }

    /// This party leaves `wait`; the last one out of a finished round (or a
    /// reset) reopens the barrier.
    fn leave(&self, index: usize) {
        let slot = self.barrier.slot(index);
        if slot.load(Relaxed) != 0 {
            slot.store(0, Relaxed);
            self.set_count(self.count().saturating_sub(1));
        }
        self.reopen_if_empty();
    }

    fn reopen_if_empty(&self) {
        if self.count() == 0 && matches!(self.state(), DRAINING | RESETTING) {
            self.set_state(FILLING);
            self.notify_all();
        }
    }

    /// Removes waiting (and entering) processes that died; says whether
    /// there were any.
    fn reap_dead(&self) -> bool {
        let me = owner::me().pid;
        let dead = |tag: u64| {
            let pid = owner::tag_pid(tag);
            tag != 0 && pid != me && owner::is_dead(pid, tag)
        };
        let mut found = false;
        for index in 0..self.barrier.parties {
            let slot = self.barrier.slot(index);
            if dead(slot.load(Relaxed)) {
                slot.store(0, Relaxed);
                self.set_count(self.count().saturating_sub(1));
                found = true;
            }
            let entering = self.barrier.entering_slot(index);
            if dead(entering.load(Relaxed)) {
                entering.store(0, Relaxed);
                found = true;
            }
        }
        found
    }
}

/// This party's entering slot, taken while it waits for the previous round
/// to finish, given back when it arrives or leaves (the barrier's lock is
/// held whenever it changes). With more waiters than parties, the extra
/// ones go unrecorded.
struct Entering<'a> {
    barrier: &'a Barrier,
    index: Option<usize>,
}

impl<'a> Entering<'a> {
    fn new(barrier: &'a Barrier, tag: u64, needed: bool) -> Entering<'a> {
        let index = needed
            .then(|| {
                (0..barrier.parties).find(|&i| {
                    let slot = barrier.entering_slot(i);
                    slot.compare_exchange(0, tag, Relaxed, Relaxed).is_ok()
                })
            })
            .flatten();
        Entering { barrier, index }
    }

    fn done(mut self) {
        self.clear();
    }

    fn clear(&mut self) {
        if let Some(index) = self.index.take() {
            self.barrier.entering_slot(index).store(0, Relaxed);
        }
    }
}

impl Drop for Entering<'_> {
    fn drop(&mut self) {
        self.clear();
    }
}

impl Drop for State<'_> {
    fn drop(&mut self) {
        self.raw.release();
    }
}

impl Clone for Barrier {
    fn clone(&self) -> Barrier {
        Barrier {
            region: Arc::clone(&self.region),
            parties: self.parties,
        }
    }
}

impl Serialize for Barrier {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        super::serialize_region(&self.region, KIND, s)
    }
}

impl<'de> Deserialize<'de> for Barrier {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Barrier, D::Error> {
        let region = super::deserialize_region(d, KIND, None)?;
        let parties = region.atomic_u32(PARTIES).load(Relaxed) as usize;
        if parties == 0 || parties > MAX_PARTIES || region.len() != SLOTS + 16 * parties {
            return Err(D::Error::custom(crate::wire::handle_error(format!(
                "received {} is invalid: {parties} parties in {} bytes",
                KIND.name,
                region.len()
            ))));
        }
        Ok(Barrier {
            region: Arc::new(region),
            parties,
        })
    }
}

impl fmt::Debug for Barrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Barrier")
            .field("parties", &self.parties)
            .finish_non_exhaustive()
    }
}
