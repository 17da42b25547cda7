//! Every `unsafe` operation of the crate, each small and explained.
//!
//! The rest of the crate is `#![forbid(unsafe_code)]`-clean: it calls the
//! safe functions here (or rustix's safe wrappers).

#![allow(unsafe_code)]

pub(crate) mod dial;
pub(crate) mod futex;
pub(crate) mod lane;
pub(crate) mod ring;
pub(crate) mod shm;

use std::io;
use std::os::fd::BorrowedFd;

use rustix::net::RecvFlags;

/// The loader calls this before `main` (and before a test harness, doctest
/// or any other code of the program runs): in a child it runs the entry and
/// exits; in any other process it returns at once.
extern "C" fn bootstrap_ctor() {
    // Unwinding out of a function the loader called is undefined behaviour.
    if std::panic::catch_unwind(|| crate::bootstrap::on_load(crate::entry::loaded_count())).is_err()
    {
        std::process::abort();
    }
}

/// Registers an entry from its own load-time constructor. Not public API:
/// used by `#[process_entry]`.
///
/// With one constructor per entry that registers it and then checks whether
/// this is a child whose entries are now all known, a child finds its entry
/// however the linker ordered the constructors (which it does not promise).
#[doc(hidden)]
#[macro_export]
macro_rules! __entry_ctor {
    ($entry:ty, $file:expr, $line:expr) => {
        const _: () = {
            static RECORD: $crate::__private::EntryRecord =
                $crate::__private::EntryRecord::new::<$entry>($file, $line);
            extern "C" fn __multiproc_entry_ctor() {
                // Unwinding out of a function the loader called is undefined behaviour.
                if ::std::panic::catch_unwind(|| $crate::__private::entry_loaded(&RECORD)).is_err()
                {
                    ::std::process::abort();
                }
            }
            #[used]
            // SAFETY: `.init_array` holds pointers to `extern "C" fn()` that
            // the loader calls once at start-up; the static has exactly that
            // type, and the function does not unwind.
            #[unsafe(link_section = ".init_array")]
            static __MULTIPROC_ENTRY_CTOR: extern "C" fn() = __multiproc_entry_ctor;
        };
    };
}

/// The constructor's slot in `.init_array`.
///
/// Everything that registers an entry refers to this static (through
/// [`Anchor`]), so a linker that drops unreferenced archive members keeps
/// the object holding it in every binary that has entries.
#[used]
// SAFETY: `.init_array` holds pointers to `extern "C" fn()` that the loader
// calls once at start-up; the static has exactly that type, and the function
// neither unwinds (see above) nor relies on `main` having run.
#[unsafe(link_section = ".init_array")]
pub(crate) static BOOTSTRAP_CTOR: extern "C" fn() = bootstrap_ctor;

/// A reference to the bootstrap constructor, stored in every entry record.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Anchor(#[allow(dead_code)] &'static extern "C" fn());

/// The one [`Anchor`].
pub(crate) const ANCHOR: Anchor = Anchor(&BOOTSTRAP_CTOR);

/// Removes an environment variable while the process is single-threaded.
///
/// Only for the bootstrap constructor, which runs before `main` and before
/// any thread has been started.
pub(crate) fn remove_env_before_main(key: &str) {
    // SAFETY: called only from the load-time constructor, while the process
    // has one thread, so nothing can read the environment concurrently.
    unsafe { std::env::remove_var(key) }
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
