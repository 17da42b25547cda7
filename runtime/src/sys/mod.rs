//! Every `unsafe` operation of the crate, each small and explained.
//!
//! The rest of the crate is `#![forbid(unsafe_code)]`-clean: it calls the
//! safe functions here (or rustix's safe wrappers).

#![allow(unsafe_code)]

pub(crate) mod dial;
pub(crate) mod fork;
pub(crate) mod futex;
pub(crate) mod holder;
pub(crate) mod lock_word;
pub(crate) mod owner;
pub(crate) mod pidfd;
pub(crate) mod poll;
pub(crate) mod ring;
pub(crate) mod shm;
pub(crate) mod signal;
pub(crate) mod slots;
pub(crate) mod spawn;

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::net::{AddressFamily, RecvFlags, SocketFlags, SocketType};

/// Defines `static $name: extern "C" fn()` in `.init_array`: the loader
/// calls it once at start-up, before `main` (and before a test harness,
/// doctest or any other code of the program runs), and it runs `$body`.
///
/// Used for the bootstrap constructor (`spawn/child.rs`) and, through
/// `__private`, by the constructor `#[process_entry]` emits for each entry.
/// The function catches any panic of `$body` and aborts, since unwinding
/// out of a function the loader called is undefined behaviour.
#[doc(hidden)]
#[macro_export]
macro_rules! __load_time_ctor {
    // Inside this crate, which denies `unsafe_code` outside `sys/`: the
    // attribute is this macro's, and so is the allowance. (Expanded in
    // another crate, this macro's `unsafe` is not that crate's code, and an
    // `allow` would clash with its `forbid(unsafe_code)`.)
    (@crate $vis:vis $name:ident => $body:expr) => {
        $crate::__load_time_ctor!(#[allow(unsafe_code)] $vis $name => $body);
    };
    ($(#[$attr:meta])* $vis:vis $name:ident => $body:expr) => {
        $(#[$attr])*
        #[used]
        // SAFETY: `.init_array` holds pointers to `extern "C" fn()` that the
        // loader calls once at start-up; the static has exactly that type,
        // and the function never unwinds (a panic aborts) nor relies on
        // `main` having run.
        #[unsafe(link_section = ".init_array")]
        $vis static $name: extern "C" fn() = {
            extern "C" fn __multiproc_load_time_ctor() {
                if ::std::panic::catch_unwind(|| {
                    $body;
                })
                .is_err()
                {
                    ::std::process::abort();
                }
            }
            __multiproc_load_time_ctor
        };
    };
}

/// Removes an environment variable while the process is single-threaded.
///
/// Only for the bootstrap constructor, which runs before `main` and before
/// any thread has been started.
pub(crate) fn remove_env_before_main(key: &str) {
    // SAFETY: called only from the load-time constructor, while the process
    // has one thread, so nothing can read the environment concurrently.
    unsafe { std::env::remove_var(key) }
}

/// Makes `cmd`'s child close every descriptor above standard error when it
/// executes, whether or not it was opened close-on-exec: the child starts
/// with standard input, output and error only (as Python's fork server
/// does), and holds nothing the parent had open by chance.
pub(crate) fn close_others_at_exec(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // Read here, in the parent: the hook below may not allocate or lock.
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(1 << 20)
        .min(1 << 20) as i32;
    // SAFETY: the hook runs in the forked child before `exec` and makes
    // only async-signal-safe system calls (`close_range`, else `fcntl`),
    // with no allocation and no lock; it touches no memory but its
    // captured integer.
    unsafe {
        cmd.pre_exec(move || {
            let marked = libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            if marked != 0 {
                // Before Linux 5.11: one descriptor at a time.
                for fd in 3..limit {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
            Ok(())
        });
    }
}

/// Whether this process runs in secure-execution mode (`getauxval(AT_SECURE)`):
/// set-user-ID or set-group-ID, or with file capabilities, so its
/// environment was set by a less privileged user.
pub(crate) fn secure_execution() -> bool {
    // SAFETY: `getauxval` reads the auxiliary vector the kernel gave this
    // process; it has no preconditions and returns 0 for absent keys.
    unsafe { libc::getauxval(libc::AT_SECURE) != 0 }
}

/// Whether standard input is a socket (`fstat(0)`).
pub(crate) fn stdin_is_socket() -> bool {
    rustix::fs::fstat(rustix::stdio::stdin()).is_ok_and(|st| {
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Socket
    })
}

/// Sets `SIGPIPE` to ignored, as std's runtime does before `main` (which a
/// child never reaches), so a write to a closed pipe is an `EPIPE` error.
pub(crate) fn ignore_sigpipe() {
    // SAFETY: `SIG_IGN` is a valid disposition for SIGPIPE and installs no
    // handler code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// Sets `SIGCHLD` to its default disposition, so that this process's
/// children wait to be reaped by it; returns whether it was ignored (as an
/// ignored signal stays across `exec`, from whoever started this process).
/// It replaces the disposition's flags too, so it also undoes
/// [`reap_children_automatically`].
pub(crate) fn default_sigchld() -> bool {
    // SAFETY: `SIG_DFL` is a valid disposition for SIGCHLD and installs no
    // handler code.
    let old = unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
    old == libc::SIG_IGN
}

/// Has the kernel reap this process's children as they exit (`SIGCHLD` at
/// its default disposition, with `SA_NOCLDWAIT`): no child is ever left a
/// zombie, `waitid` finds none, and `SIGCHLD` is still sent (to a
/// [`sigchld_fd`] while blocked). Where the kernel keeps how a process
/// ended for its pidfds ([`pidfd::kept_exit`]) that is how to learn it.
/// [`default_sigchld`] undoes it. Returns whether it was set.
pub(crate) fn reap_children_automatically() -> bool {
    // SAFETY: `sigaction` is plain data, zeroed to an empty mask; the
    // disposition is `SIG_DFL`, so no handler code is installed.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = libc::SIG_DFL;
        action.sa_flags = libc::SA_NOCLDWAIT;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGCHLD, &action, std::ptr::null_mut()) == 0
    }
}

/// Sets `SIGCHLD` to ignored again (see [`default_sigchld`]).
pub(crate) fn ignore_sigchld() {
    // SAFETY: `SIG_IGN` is a valid disposition for SIGCHLD and installs no
    // handler code.
    unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_IGN);
    }
}

/// Blocks `SIGCHLD` for this thread and returns a signalfd (CLOEXEC,
/// non-blocking) that becomes readable when one is pending: the fork
/// server's wake-up for children it holds no pidfd for (memory holders,
/// [`holder`]). Its children unblock it ([`unblock_sigchld`]).
pub(crate) fn sigchld_fd() -> io::Result<OwnedFd> {
    let set = sigchld_set();
    // SAFETY: `set` is a valid set; `pthread_sigmask` changes this
    // thread's mask only.
    let fd = unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK)
    };
    if fd < 0 {
        let err = io::Error::last_os_error();
        unblock_sigchld();
        return Err(err);
    }
    // SAFETY: `signalfd` returned a new descriptor that nothing else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Unblocks `SIGCHLD` for this thread (see [`sigchld_fd`]).
pub(crate) fn unblock_sigchld() {
    let set = sigchld_set();
    // SAFETY: as in `sigchld_fd`.
    unsafe {
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

/// The signal set of `SIGCHLD` alone.
fn sigchld_set() -> libc::sigset_t {
    // SAFETY: `sigset_t` is plain data; `sigemptyset` and `sigaddset` only
    // write the set given, which they initialise.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        set
    }
}

/// Whether this kernel's release is `major.minor` or later (its release
/// number is read once).
pub(crate) fn kernel_at_least(major: u32, minor: u32) -> bool {
    static RELEASE: std::sync::OnceLock<(u32, u32)> = std::sync::OnceLock::new();
    *RELEASE.get_or_init(|| {
        let uname = rustix::system::uname();
        let release = uname.release().to_string_lossy();
        let mut numbers = release
            .split(|c: char| !c.is_ascii_digit())
            .map(|n| n.parse::<u32>().unwrap_or(0));
        (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0))
    }) >= (major, minor)
}

/// The pid of a child of this process that has exited and is not reaped
/// yet, if there is one; it stays unreaped (`WNOWAIT`).
pub(crate) fn exited_child() -> Option<u32> {
    // SAFETY: `siginfo_t` is plain data that `waitid` fills.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid place for the kernel to write.
    let r = unsafe {
        libc::waitid(
            libc::P_ALL,
            0,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: the kernel filled `info` for a child's state change (a zero
    // pid means none).
    let pid = unsafe { info.si_pid() };
    (r == 0 && pid > 0).then_some(pid as u32)
}

/// A connected pair of Unix stream sockets, both ends CLOEXEC: a child's
/// control socket, a pipe, a fork-server spare's sockets.
pub(crate) fn stream_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Runs `f` when the process exits normally (`main` returns, or `exit`).
pub(crate) fn at_exit(f: extern "C" fn()) -> io::Result<()> {
    // SAFETY: `f` is a plain `extern "C" fn()` with no captured state; libc
    // calls it at most once during `exit`.
    let rc = unsafe { libc::atexit(f) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::other("atexit failed"))
    }
}

/// Receives at most `max` bytes from `sock` (with `flags`), appended to
/// `buf` without zero-filling it first. Returns how many bytes arrived (0 at
/// end of stream).
pub(crate) fn recv_append(
    sock: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
    max: usize,
    flags: RecvFlags,
) -> io::Result<usize> {
    buf.reserve(max);
    let len = buf.len();
    let spare = &mut buf.spare_capacity_mut()[..max];
    let n = loop {
        match rustix::net::recv(sock, &mut *spare, flags) {
            Ok(((init, _), _)) => break init.len(),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    // SAFETY: `recv` initialised the first `n` bytes of the spare capacity,
    // and `n <= max <= capacity - len`.
    unsafe { buf.set_len(len + n) };
    Ok(n)
}

/// Reads at most `max` bytes at `offset` of `fd` (`pread`), appended to
/// `buf` without zero-filling it first. Returns how many bytes arrived.
pub(crate) fn pread_append(
    fd: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
    max: usize,
    offset: u64,
) -> io::Result<usize> {
    buf.reserve(max);
    let len = buf.len();
    let spare = &mut buf.spare_capacity_mut()[..max];
    let n = loop {
        match rustix::io::pread(fd, &mut *spare, offset) {
            Ok((init, _)) => break init.len(),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    // SAFETY: `pread` initialised the first `n` bytes of the spare capacity,
    // and `n <= max <= capacity - len`.
    unsafe { buf.set_len(len + n) };
    Ok(n)
}
