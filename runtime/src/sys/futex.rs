//! Futex waits and wakes on words that other processes share.
//!
//! The words live in `MAP_SHARED` memfd mappings, so the calls never pass
//! `FUTEX_PRIVATE_FLAG`: the kernel keys the wait queue on the backing
//! page, which is the same in every process that maps it.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

use rustix::io::Errno;
use rustix::thread::futex::{self, Flags, Timespec};

/// How a [`wait`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slept {
    /// Woken, interrupted, or the word no longer held `expected`: look again.
    Woken,
    /// The timeout passed.
    TimedOut,
}

/// The longest single sleep, and so how often every waiter of the crate
/// looks again (and checks that a lock's owner still lives). Every waker in this crate changes a word and
/// then makes the wake-up call; a waker killed between the two (or one
/// that took a sleeper count and died before waking) would leave sleepers
/// asleep for ever while the word says they may go. So no sleep lasts
/// longer than this: a sleeper cut short reports [`Slept::Woken`] and its
/// caller's loop looks at the word again, which bounds what such a death
/// costs to one period of lateness. Idle waiters wake this often; a look
/// costs a few microseconds.
pub(crate) const CHECK_PERIOD: Duration = Duration::from_millis(50);
const LONGEST_SLEEP: Duration = CHECK_PERIOD;

/// This process's longest sleep, in milliseconds, when a test changed it.
#[cfg(feature = "test-hooks")]
static LONGEST_SLEEP_MS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(LONGEST_SLEEP.as_millis() as u64);

fn longest_sleep() -> Duration {
    #[cfg(feature = "test-hooks")]
    return Duration::from_millis(LONGEST_SLEEP_MS.load(std::sync::atomic::Ordering::Relaxed));
    #[cfg(not(feature = "test-hooks"))]
    LONGEST_SLEEP
}

/// Sets how long a futex wait of this process sleeps, unwoken, before it
/// looks again ([`LONGEST_SLEEP`] otherwise). Not public API: for a test
/// that must show that a wait ended because it was woken.
#[doc(hidden)]
#[cfg(feature = "test-hooks")]
pub fn set_futex_check_period(period: Duration) {
    let ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX);
    LONGEST_SLEEP_MS.store(ms, std::sync::atomic::Ordering::Relaxed);
}

/// `futex(word, FUTEX_WAIT, expected, timeout)`: sleeps while `word` holds
/// `expected`, at most `timeout` (relative, `CLOCK_MONOTONIC`) when given,
/// and never longer than [`LONGEST_SLEEP`]. [`Slept::TimedOut`] only when
/// the caller's own timeout passed; callers look again after `Woken`.
pub(crate) fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> Slept {
    let longest = longest_sleep();
    let (sleep, cut) = match timeout {
        Some(t) if t <= longest => (t, false),
        _ => (longest, true),
    };
    let timespec = Timespec {
        tv_sec: sleep.as_secs() as i64,
        tv_nsec: sleep.subsec_nanos().into(),
    };
    match futex::wait(word, Flags::empty(), expected, Some(&timespec)) {
        Err(Errno::TIMEDOUT) if !cut => Slept::TimedOut,
        // EAGAIN (value changed), EINTR, a wake-up, or a sleep cut short:
        // the caller re-checks.
        _ => Slept::Woken,
    }
}

/// `futex(word, FUTEX_WAKE, n)`: wakes up to `n` waiters of `word`.
pub(crate) fn wake(word: &AtomicU32, n: u32) {
    let _ = futex::wake(word, Flags::empty(), n.min(i32::MAX as u32));
}

/// Wakes every waiter of `word`.
pub(crate) fn wake_all(word: &AtomicU32) {
    wake(word, i32::MAX as u32);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Runs `f` on a thread: its result, or a panic if that takes 20 s.
    fn within_20s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || tx.send(f()));
        rx.recv_timeout(Duration::from_secs(20))
            .expect("a futex sleep went on for ever")
    }

    #[test]
    fn no_sleep_outlasts_a_period_whatever_its_timeout() {
        // Nobody wakes these words (as when a waker is killed between its
        // store and its wake-up call), yet each sleep ends, as `Woken`, so
        // that the caller looks at its word again.
        let long = within_20s(|| wait(&AtomicU32::new(0), 0, Some(Duration::from_secs(3600))));
        assert_eq!(long, Slept::Woken);
        let endless = within_20s(|| wait(&AtomicU32::new(0), 0, None));
        assert_eq!(endless, Slept::Woken);
        // A timeout within the period is the caller's own.
        let short = wait(&AtomicU32::new(0), 0, Some(Duration::from_millis(1)));
        assert_eq!(short, Slept::TimedOut);
        assert_eq!(
            wait(&AtomicU32::new(1), 0, None),
            Slept::Woken,
            "not `expected`"
        );
    }
}
