//! What the kernel keeps of a process that has ended: since Linux 6.15,
//! anyone holding its pidfd can read how it ended once it has been reaped
//! (`PIDFD_GET_INFO` with `PIDFD_INFO_EXIT`). A process that ignores
//! `SIGCHLD` has its children reaped by the kernel, so `waitid` cannot say
//! how they ended; their pidfds still can.

use std::os::fd::{AsRawFd, BorrowedFd};

/// How a process ended, as the kernel kept it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeptExit {
    /// It exited with this code.
    Code(i32),
    /// A signal of this number ended it.
    Signal(i32),
}

/// The first version of the kernel's `struct pidfd_info` (64 bytes), which
/// ends with the exit status. The kernel copies only as many bytes as the
/// request's size says, so later fields need not be known.
#[repr(C)]
#[derive(Default)]
struct PidfdInfo {
    mask: u64,
    cgroupid: u64,
    pid: u32,
    tgid: u32,
    ppid: u32,
    ruid: u32,
    rgid: u32,
    euid: u32,
    egid: u32,
    suid: u32,
    sgid: u32,
    fsuid: u32,
    fsgid: u32,
    exit_code: i32,
}

/// `PIDFD_INFO_EXIT`: ask for, and (in the answer) have, the exit status.
const INFO_EXIT: u64 = 1 << 3;

/// `_IOWR(PIDFS_IOCTL_MAGIC = 0xFF, 11, struct pidfd_info)`, with the
/// generic encoding of x86_64 and aarch64: direction (read and write) in
/// bits 30–31, the size in bits 16–29, the type, then the number.
const GET_INFO: libc::Ioctl =
    (3 << 30) | ((std::mem::size_of::<PidfdInfo>() as libc::Ioctl) << 16) | (0xFF << 8) | 11;

/// Whether this kernel keeps exit statuses for pidfds: Linux 6.15 or
/// later, by its release number. (With the `test-hooks` feature, a test
/// process whose environment has `MULTIPROC_TEST_NO_KEPT_EXITS` is told
/// no, and acts as on an older kernel.)
pub(crate) fn kernel_keeps_exits() -> bool {
    #[cfg(feature = "test-hooks")]
    if std::env::var_os(NO_KEPT_EXITS_ENV).is_some() {
        return false;
    }
    super::kernel_at_least(6, 15)
}

/// See [`kernel_keeps_exits`].
#[cfg(feature = "test-hooks")]
const NO_KEPT_EXITS_ENV: &str = "MULTIPROC_TEST_NO_KEPT_EXITS";

/// How the process of `pidfd` ended, if it has ended, been reaped, and the
/// kernel keeps that (Linux 6.15 and later); `None` otherwise: still
/// running, ended but not yet reaped, or an older kernel.
pub(crate) fn kept_exit(pidfd: BorrowedFd<'_>) -> Option<KeptExit> {
    if !kernel_keeps_exits() {
        return None;
    }
    let mut info = PidfdInfo {
        mask: INFO_EXIT,
        ..PidfdInfo::default()
    };
    // SAFETY: `GET_INFO` encodes the size of `PidfdInfo`, so the kernel
    // reads and writes at most that many bytes at the pointer, which is an
    // exclusive borrow of a live `PidfdInfo` (a plain `repr(C)` struct of
    // integers, valid for any bytes). The descriptor is borrowed for the
    // call; on any other file the kernel refuses the request.
    let r = unsafe { libc::ioctl(pidfd.as_raw_fd(), GET_INFO, &mut info as *mut PidfdInfo) };
    if r != 0 || info.mask & INFO_EXIT == 0 {
        return None;
    }
    let raw = info.exit_code;
    if libc::WIFEXITED(raw) {
        Some(KeptExit::Code(libc::WEXITSTATUS(raw)))
    } else if libc::WIFSIGNALED(raw) {
        Some(KeptExit::Signal(libc::WTERMSIG(raw)))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_the_kernels() {
        // 0xC040FF0B: what the kernel's headers compute for a 64-byte
        // struct.
        assert_eq!(std::mem::size_of::<PidfdInfo>(), 64);
        assert_eq!(GET_INFO, 0xC040_FF0B);
    }

    /// Runs `sh -c script`, reaps it, and returns what its pidfd keeps.
    fn kept_after(script: &str) -> Option<KeptExit> {
        let mut child = std::process::Command::new("sh")
            .args(["-c", script])
            .spawn()
            .expect("sh");
        let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
        // Not reaped before `wait`, so the pidfd is this child's.
        let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
            .expect("pidfd_open");
        assert_eq!(
            kept_exit(std::os::fd::AsFd::as_fd(&pidfd)),
            None,
            "before it is reaped"
        );
        child.wait().expect("wait");
        kept_exit(std::os::fd::AsFd::as_fd(&pidfd))
    }

    #[test]
    fn a_reaped_process_keeps_its_exit_code_or_signal() {
        if !kernel_keeps_exits() {
            println!("skipped: this kernel keeps no exit status (before 6.15)");
            return;
        }
        assert_eq!(kept_after("exit 3"), Some(KeptExit::Code(3)));
        assert_eq!(kept_after("kill -KILL $$"), Some(KeptExit::Signal(9)));
    }

    #[test]
    fn a_live_process_has_no_kept_exit() {
        let me = rustix::process::pidfd_open(
            rustix::process::getpid(),
            rustix::process::PidfdFlags::empty(),
        )
        .expect("pidfd_open");
        assert_eq!(kept_exit(std::os::fd::AsFd::as_fd(&me)), None);
    }
}
