//! `fork` without `exec`, for the fork server (`spawn/fork_server.rs`).
//!
//! Forking is sound only in a process with one thread: the child is a copy
//! of the forking thread alone, and any lock another thread held (the
//! allocator's, stdout's, …) would stay locked in it for ever. The server is
//! this binary held in a load-time constructor, before `main`, and never
//! starts a thread; [`SingleThreaded::check`] makes sure of it once, and
//! [`fork`] takes that proof.

use std::io;

use rustix::process::Pid;

/// Proof that this process had one thread when it was checked. Only the
/// fork server makes one, and it never starts a thread afterwards.
#[derive(Debug)]
pub(crate) struct SingleThreaded(());

impl SingleThreaded {
    /// Counts this process's threads (`/proc/self/task`); `Err` unless
    /// there is exactly one.
    pub(crate) fn check() -> io::Result<SingleThreaded> {
        let threads = std::fs::read_dir("/proc/self/task")?.count();
        if threads == 1 {
            Ok(SingleThreaded(()))
        } else {
            Err(io::Error::other(format!(
                "{threads} threads are running, so forking is not safe"
            )))
        }
    }
}

impl SingleThreaded {
    /// Changes this process's environment: clears it first if `clear`,
    /// then sets each `(key, Some(value))` and removes each `(key, None)`,
    /// in order, leaving it as `exec` would have made it from the same
    /// changes to a `Command`. For a forked child, before it runs its
    /// entry. Never panics: a name `std::env::set_var` refuses (one with
    /// `=`, or empty) is put as the raw `name=value` entry `exec` would
    /// have made, and removing such a name does nothing, as it finds
    /// nothing there either. A name or value with a NUL byte cannot be
    /// expressed at all; the parent refuses it before it asks for a child,
    /// and here it is skipped.
    pub(crate) fn change_env(
        &self,
        clear: bool,
        vars: &[(std::ffi::OsString, Option<std::ffi::OsString>)],
    ) {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        if clear {
            // SAFETY: `self` proves this process has one thread (the
            // server's, whose proof a forked child inherits: `fork` copies
            // only the calling thread), so nothing reads the environment
            // while it changes.
            unsafe {
                libc::clearenv();
            }
        }
        for (key, value) in vars {
            let plain = !key.is_empty() && !key.as_bytes().contains(&b'=');
            let Ok(name) = CString::new(key.as_bytes()) else {
                continue;
            };
            match value {
                Some(value) => {
                    let Ok(text) = CString::new(value.as_bytes()) else {
                        continue;
                    };
                    if plain {
                        // SAFETY: one thread, as above; both are
                        // NUL-terminated strings that `setenv` copies.
                        unsafe {
                            libc::setenv(name.as_ptr(), text.as_ptr(), 1);
                        }
                    } else {
                        let mut entry = key.as_bytes().to_vec();
                        entry.push(b'=');
                        entry.extend_from_slice(value.as_bytes());
                        let Ok(entry) = CString::new(entry) else {
                            continue;
                        };
                        // SAFETY: one thread, as above. `putenv` keeps
                        // the pointer, so the string is leaked on purpose
                        // (once per odd name, in a child).
                        unsafe {
                            libc::putenv(entry.into_raw());
                        }
                    }
                }
                None if plain => {
                    // SAFETY: one thread, as above.
                    unsafe {
                        libc::unsetenv(name.as_ptr());
                    }
                }
                None => {}
            }
        }
    }
}

/// Which side of a [`fork`] this is.
#[derive(Debug)]
pub(crate) enum Forked {
    /// The new process.
    Child,
    /// The forking process; the new child's pid.
    Parent(Pid),
}

/// Forks this (single-threaded) process. In the child, the per-process
/// caches of `sys` (pid, start-time tag, thread id) are forgotten first.
pub(crate) fn fork(_single: &SingleThreaded) -> io::Result<Forked> {
    // SAFETY: `_single` proves the process has one thread (the server checks
    // it once and never starts another), so the child's copy of memory holds
    // no lock taken by a thread that does not exist in it; the child then
    // runs ordinary code in that complete copy. No Rust invariant depends
    // on the pid.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            super::owner::forget_after_fork();
            Ok(Forked::Child)
        }
        pid => Pid::from_raw(pid)
            .map(Forked::Parent)
            .ok_or_else(|| io::Error::other("fork returned a negative pid")),
    }
}

/// Test hook: forks a child that holds a copy of every descriptor of this
/// process (its sockets among them) for `linger`, then exits, as a C
/// library or a daemonizing crate might fork behind a task's back. Works in
/// a process with many threads, since the child calls only `sleep` and
/// `_exit`.
#[cfg(feature = "test-hooks")]
pub fn fork_lingering_child(linger: std::time::Duration) -> io::Result<()> {
    let secs = libc::c_uint::try_from(linger.as_secs()).unwrap_or(libc::c_uint::MAX);
    // SAFETY: the child is a copy of this thread alone, so a lock another
    // thread held stays locked in it; it therefore calls only `sleep` and
    // `_exit`, which are async-signal-safe and take no lock, and touches no
    // memory the parent could be changing.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            // SAFETY: async-signal-safe calls only, as said above.
            unsafe {
                libc::sleep(secs);
                libc::_exit(0)
            }
        }
        _ => Ok(()),
    }
}

/// For the spawn benchmark's floor (not public API, and not behind
/// `test-hooks`, which changes what the benchmark measures): forks `rounds`
/// times, one at a time, each new process calling `_exit(0)` at once and
/// reaped with `waitpid` before the next fork; returns the total time. The
/// kernel's own cost of a forked start, with no call, result or wake-up of
/// another process. Works in a process with many threads, since the child
/// calls only `_exit`.
pub fn fork_exit_wait(rounds: u64) -> io::Result<std::time::Duration> {
    let start = std::time::Instant::now();
    for _ in 0..rounds {
        // SAFETY: the child is a copy of this thread alone; it calls only
        // `_exit`, which is async-signal-safe, takes no lock and touches no
        // memory the parent could be changing.
        match unsafe { libc::fork() } {
            -1 => return Err(io::Error::last_os_error()),
            // SAFETY: as said above.
            0 => unsafe { libc::_exit(0) },
            pid => {
                let mut status = 0;
                // SAFETY: `status` is a valid place for the kernel to
                // write; `pid` is our child, not yet reaped.
                if unsafe { libc::waitpid(pid, &mut status, 0) } == -1 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
    }
    Ok(start.elapsed())
}
