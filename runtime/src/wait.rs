//! [`wait`]: blocks until any of several connections or processes is ready
//! (Python's `multiprocessing.connection.wait`).

use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};

use crate::error::Error;
use crate::pipe::Connection;
use crate::spawn::parent::JoinHandle;
use crate::sys::futex::CHECK_PERIOD;

/// Something [`wait`] can wait on: a [`Connection`] (ready when `recv`
/// would return at once: a message, or the other end gone) or a
/// [`JoinHandle`] (ready when the child has ended).
///
/// Sealed: implemented by multiproc's handles only.
pub trait Waitable: private::Sealed {}

mod private {
    use std::os::fd::BorrowedFd;

    /// How to tell whether a waitable is ready.
    #[derive(Debug)]
    pub enum Readiness<'a> {
        /// Ready now.
        Now,
        /// Ready when this descriptor is readable.
        Fd(BorrowedFd<'a>),
        /// No descriptor says it: look again every check period.
        Look,
    }

    pub trait Sealed {
        fn readiness(&self) -> Readiness<'_>;
    }
}

use private::Readiness;

impl<T> private::Sealed for Connection<T> {
    fn readiness(&self) -> Readiness<'_> {
        match self.readiness() {
            None => Readiness::Now,
            Some(fd) => Readiness::Fd(fd),
        }
    }
}
impl<T> Waitable for Connection<T> {}

impl<R> private::Sealed for JoinHandle<R> {
    fn readiness(&self) -> Readiness<'_> {
        if !self.is_alive() {
            return Readiness::Now;
        }
        match self.exit_fd() {
            Some(fd) => Readiness::Fd(fd),
            None => Readiness::Look,
        }
    }
}
impl<R> Waitable for JoinHandle<R> {}

/// Waits until at least one of `objects` is ready, or `timeout` passes
/// (`None`: no limit); returns the indices of those that are ready, in
/// order (empty on timeout). Python's `multiprocessing.connection.wait`.
///
/// Unlike polling a [`Connection`]'s descriptor yourself, this also sees a
/// message already read ahead from the socket.
///
/// ```
/// use std::time::Duration;
/// use multiproc::{process_entry, spawn, wait, Pipe};
///
/// #[process_entry]
/// fn answer(conn: multiproc::Connection<u32>) {
///     conn.send(&42).unwrap();
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let (quiet, _keep) = Pipe::<u32>::duplex()?;
/// let (talks, theirs) = Pipe::<u32>::duplex()?;
/// let child = spawn!(answer, theirs)?;
/// let ready = wait(&[&quiet, &talks], Some(Duration::from_secs(10)))?;
/// assert_eq!(ready, [1]);
/// assert_eq!(talks.recv()?, 42);
/// assert_eq!(wait(&[&child], None)?, [0]); // the child has ended
/// child.join()?;
/// # Ok(())
/// # }
/// ```
pub fn wait(objects: &[&dyn Waitable], timeout: Option<Duration>) -> Result<Vec<usize>, Error> {
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    loop {
        let mut ready = Vec::new();
        let mut fds: Vec<(usize, BorrowedFd<'_>)> = Vec::new();
        let mut look_again = false;
        for (index, object) in objects.iter().enumerate() {
            match object.readiness() {
                Readiness::Now => ready.push(index),
                Readiness::Fd(fd) => fds.push((index, fd)),
                Readiness::Look => look_again = true,
            }
        }
        if !ready.is_empty() {
            // Every ready object is listed, as Python's `wait` does: those
            // whose descriptors are ready now too.
            ready.extend(poll_ready(&fds, Some(Duration::ZERO))?);
            ready.sort_unstable();
            return Ok(ready);
        }
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let period = match (left, look_again) {
            (Some(left), true) => Some(left.min(CHECK_PERIOD)),
            (Some(left), false) => Some(left),
            (None, true) => Some(CHECK_PERIOD),
            (None, false) => None,
        };
        let ready = poll_ready(&fds, period)?;
        if !ready.is_empty() {
            return Ok(ready);
        }
        if left == Some(Duration::ZERO) {
            return Ok(Vec::new());
        }
    }
}

/// Polls the descriptors of `fds` for up to `period` (`None`: no limit);
/// returns the indices that go with the readable ones, in order.
fn poll_ready(
    fds: &[(usize, BorrowedFd<'_>)],
    period: Option<Duration>,
) -> Result<Vec<usize>, Error> {
    let mut polled: Vec<PollFd<'_>> = fds
        .iter()
        .map(|(_, fd)| PollFd::from_borrowed_fd(*fd, PollFlags::IN))
        .collect();
    let n = crate::sys::poll::poll(&mut polled, period)
        .map_err(|e| Error::io("waiting on connections and processes", e))?;
    if n == 0 {
        return Ok(Vec::new());
    }
    Ok(fds
        .iter()
        .zip(&polled)
        .filter(|(_, p)| !p.revents().is_empty())
        .map(|((index, _), _)| *index)
        .collect())
}
