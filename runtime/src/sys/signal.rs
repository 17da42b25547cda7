//! Signalling a process started by `std::process::Command`, and the host's
//! name.

use std::io;
use std::os::fd::OwnedFd;

use rustix::process::{Pid, PidfdFlags, Signal};

/// A signal [`ProcessRef::signal`] sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sig {
    Term,
    Kill,
}

/// A child process to signal: through a pidfd where the kernel has them
/// (no risk of reaching another process that reused the pid), else by pid.
#[derive(Debug)]
pub(crate) struct ProcessRef {
    pid: u32,
    fd: Option<OwnedFd>,
}

impl ProcessRef {
    /// Refers to the child `pid`; call it before the child can have been
    /// reaped (right after starting it).
    pub(crate) fn new(pid: u32) -> ProcessRef {
        let fd = Pid::from_raw(pid as i32)
            .and_then(|p| rustix::process::pidfd_open(p, PidfdFlags::empty()).ok());
        ProcessRef { pid, fd }
    }

    /// Sends `sig`. Without a pidfd, call it only while the child has not
    /// been reaped.
    pub(crate) fn signal(&self, sig: Sig) -> io::Result<()> {
        let sig = match sig {
            Sig::Term => Signal::TERM,
            Sig::Kill => Signal::KILL,
        };
        match &self.fd {
            Some(fd) => rustix::process::pidfd_send_signal(fd, sig)?,
            None => {
                let pid = Pid::from_raw(self.pid as i32)
                    .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
                rustix::process::kill_process(pid, sig)?;
            }
        }
        Ok(())
    }
}

/// This host's name (`uname`'s node name).
pub(crate) fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}
