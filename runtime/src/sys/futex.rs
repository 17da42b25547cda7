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
pub(crate) enum Wait {
    /// Woken, interrupted, or the word no longer held `expected`: look again.
    Woken,
    /// The timeout passed.
    TimedOut,
}

/// The longest single wait; longer ones are cut into pieces by the callers'
/// loops anyway, and this keeps the `timespec` far from any overflow.
const MAX_WAIT: Duration = Duration::from_secs(1 << 30);

/// `futex(word, FUTEX_WAIT, expected, timeout)`: sleeps while `word` holds
/// `expected`, at most `timeout` (relative, `CLOCK_MONOTONIC`) when given.
pub(crate) fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> Wait {
    let timeout = timeout.map(|d| {
        let d = d.min(MAX_WAIT);
        Timespec {
            tv_sec: d.as_secs() as i64,
            tv_nsec: d.subsec_nanos().into(),
        }
    });
    match futex::wait(word, Flags::empty(), expected, timeout.as_ref()) {
        Err(Errno::TIMEDOUT) => Wait::TimedOut,
        // EAGAIN (value changed), EINTR, or a wake-up: the caller re-checks.
        _ => Wait::Woken,
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
