//! `poll(2)` with a `Duration` timeout, retried on `EINTR`.

use std::io;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, Timespec};

/// Polls `fds` until one is ready or `timeout` passes (`None`: no limit).
/// Returns the number of ready descriptors (0 on timeout).
pub(crate) fn poll(fds: &mut [PollFd<'_>], timeout: Option<Duration>) -> io::Result<usize> {
    // A timeout too large to represent waits for ever.
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    loop {
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let ts = remaining.map(|r| Timespec {
            tv_sec: r.as_secs().min(i64::MAX as u64) as i64,
            tv_nsec: r.subsec_nanos() as _,
        });
        match rustix::event::poll(fds, ts.as_ref()) {
            Ok(n) => return Ok(n),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}
