//! [`Event`]: Python's `multiprocessing.Event`.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};
use std::time::Duration;

use super::{RegionKind, WORDS_ONLY_LEN, region_handle};
use crate::error::Error;
use crate::sys::futex;
use crate::sys::lock_word::Deadline;
use crate::sys::lock_word::Spin;
use crate::sys::shm::SharedRegion;

const KIND: RegionKind = RegionKind::new(b"mpEV", "multiproc::Event");
/// The futex word: `generation << 2 | SLEEPERS | SET`. The generation
/// counts `set` calls, so a waiter also wakes for a set that a `clear`
/// undid before it got to look.
const STATE: usize = 24;
const SET: u32 = 1;
const SLEEPERS: u32 = 2;
const GENERATION: u32 = 4;

/// A flag that processes can set, clear and wait for (Python's
/// `multiprocessing.Event`).
///
/// ```
/// use std::time::Duration;
/// use multiproc::{process_entry, spawn, Event};
///
/// #[process_entry]
/// fn wait_for_go(go: Event) -> bool {
///     go.wait_timeout(Duration::from_secs(10))
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let go = Event::new()?;
/// let child = spawn!(wait_for_go, go.clone())?;
/// go.set();
/// assert!(child.join()?);
/// assert!(go.is_set());
/// # Ok(())
/// # }
/// ```
///
/// # Caveats
/// Waiting is a futex sleep on shared memory: no process needs to stay
/// alive for the others to be woken, and a waiter that dies leaves nothing
/// behind but, at worst, one needless wake-up call on the next `set`.
pub struct Event {
    region: Arc<SharedRegion>,
}

region_handle!(Event, KIND, Some(WORDS_ONLY_LEN));

impl Event {
    /// A new event, not set.
    pub fn new() -> Result<Event, Error> {
        let region = super::create(KIND, WORDS_ONLY_LEN, 0, |_| {})?;
        Ok(Event { region })
    }

    fn state(&self) -> &AtomicU32 {
        self.region.atomic_u32(STATE)
    }

    /// Sets the flag and wakes every waiter.
    pub fn set(&self) {
        let state = self.state();
        let mut current = state.load(Relaxed);
        loop {
            if current & SET != 0 {
                return;
            }
            let next = (current & !(SET | SLEEPERS)).wrapping_add(GENERATION) | SET;
            match state.compare_exchange_weak(current, next, AcqRel, Relaxed) {
                Ok(_) => break,
                Err(now) => current = now,
            }
        }
        if current & SLEEPERS != 0 {
            futex::wake_all(state);
        }
    }

    /// Clears the flag.
    pub fn clear(&self) {
        self.state().fetch_and(!SET, Relaxed);
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> bool {
        self.state().load(Acquire) & SET != 0
    }

    /// Blocks until the flag is set (returns at once if it is).
    pub fn wait(&self) {
        while !self.wait_until(Deadline::Never) {}
    }

    /// Waits at most `timeout` for the flag: `true` if it is set, or was set
    /// while waiting (even if cleared since), `false` on timeout.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_until(Deadline::after(timeout))
    }

    fn wait_until(&self, wait: Deadline) -> bool {
        let state = self.state();
        let start = state.load(Acquire);
        if start & SET != 0 {
            return true;
        }
        let generation = start & !(SET | SLEEPERS);
        let mut current = start;
        // A peer that answers within microseconds then costs no sleep and
        // no wake-up call.
        let mut spin = Spin::new();
        loop {
            if current & SET != 0 || current & !(SET | SLEEPERS) != generation {
                return true;
            }
            let left = wait.left();
            if left == Some(Duration::ZERO) {
                return false;
            }
            if current & SLEEPERS == 0 && spin.spin() {
                current = state.load(Acquire);
                continue;
            }
            if current & SLEEPERS == 0
                && let Err(now) =
                    state.compare_exchange(current, current | SLEEPERS, Relaxed, Relaxed)
            {
                current = now;
                continue;
            }
            futex::wait(state, current | SLEEPERS, left);
            current = state.load(Acquire);
        }
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("is_set", &self.is_set())
            .finish()
    }
}
