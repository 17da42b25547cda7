//! Re-executing this binary with `posix_spawn`, holding nothing but what it
//! is handed.
//!
//! std's `Command` spawns with `posix_spawn` (a `vfork`-style clone: fast
//! from a parent of any size) unless asked for anything `posix_spawn` cannot
//! do, such as closing the descriptors a child would otherwise inherit; then
//! it forks, which costs a copy of the parent's page tables (16 ms from a
//! parent with 1 GiB of heap here, against about 1 ms). glibc's
//! `posix_spawn_file_actions_addclosefrom_np` (2.34) closes them within
//! `posix_spawn`, so a child starts with its standard streams and control
//! socket only, as under Python's spawn, at `posix_spawn`'s speed.

use std::ffi::{CStr, CString, c_char, c_int};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::OnceLock;

/// `posix_spawn_file_actions_addclosefrom_np`, looked up when first needed
/// (not linked, so that a build against an older C library still links
/// and falls back to `Command`).
type AddCloseFrom = unsafe extern "C" fn(*mut libc::posix_spawn_file_actions_t, c_int) -> c_int;

fn add_close_from() -> Option<AddCloseFrom> {
    static FOUND: OnceLock<Option<AddCloseFrom>> = OnceLock::new();
    *FOUND.get_or_init(|| {
        // Test hook: behave as with a C library that lacks it.
        #[cfg(feature = "test-hooks")]
        if std::env::var_os("MULTIPROC_TEST_NO_CLOSEFROM").is_some() {
            return None;
        }
        let name = c"posix_spawn_file_actions_addclosefrom_np";
        // SAFETY: `dlsym` with `RTLD_DEFAULT` and a NUL-terminated name
        // only looks the symbol up.
        let found = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
        if found.is_null() {
            None
        } else {
            // SAFETY: glibc's symbol of that name has exactly this C
            // signature (`int (posix_spawn_file_actions_t *, int)`).
            Some(unsafe { std::mem::transmute::<*mut libc::c_void, AddCloseFrom>(found) })
        }
    })
}

/// Owns an initialised `posix_spawn_file_actions_t`; destroys it on drop.
struct FileActions(libc::posix_spawn_file_actions_t);

impl Drop for FileActions {
    fn drop(&mut self) {
        // SAFETY: initialised by `posix_spawn_file_actions_init` in `spawn`,
        // destroyed once, here.
        unsafe { libc::posix_spawn_file_actions_destroy(&mut self.0) };
    }
}

/// Owns an initialised `posix_spawnattr_t`; destroys it on drop.
struct Attributes(libc::posix_spawnattr_t);

impl Drop for Attributes {
    fn drop(&mut self) {
        // SAFETY: initialised by `posix_spawnattr_init` in `spawn`,
        // destroyed once, here.
        unsafe { libc::posix_spawnattr_destroy(&mut self.0) };
    }
}

/// A C call's result: 0, or the error number it returned.
fn check(result: c_int) -> io::Result<()> {
    match result {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// Starts `program` with `argv` and `envp`, `stdin` as its standard input,
/// standard output and error inherited, and every other descriptor closed;
/// with the calling thread's signal mask and `SIGPIPE` at its default, as
/// std's `Command` starts a child (it keeps the mask since Rust 1.66, as
/// Python's spawn does: a signal blocked as under `nohup` stays blocked).
/// Returns its pid; `Ok(None)` if this C library cannot close the other
/// descriptors in `posix_spawn` (then use `Command`).
pub(crate) fn spawn_closing_others(
    program: &CStr,
    argv: &[CString],
    envp: &[CString],
    stdin: BorrowedFd<'_>,
) -> io::Result<Option<u32>> {
    let Some(add_close_from) = add_close_from() else {
        return Ok(None);
    };
    let pointers = |strings: &[CString]| -> Vec<*mut c_char> {
        strings
            .iter()
            .map(|s| s.as_ptr().cast_mut())
            .chain(std::iter::once(std::ptr::null_mut()))
            .collect()
    };
    let argv = pointers(argv);
    let envp = pointers(envp);

    let mut pid: libc::pid_t = 0;
    // SAFETY: each structure is initialised by its `init` before any other
    // use, and only then given to its owner, which destroys it once on
    // drop; the `add`/`set` calls only record into them. The signal set
    // is initialised by `sigemptyset` before use. `program` and every
    // string `argv` and `envp` point to outlive the call, and both arrays
    // end with a null pointer. glibc's `posix_spawn` runs the child on its
    // own stack until `exec`, and reports a failed `exec` as its result.
    unsafe {
        let mut raw_actions = std::mem::zeroed();
        check(libc::posix_spawn_file_actions_init(&mut raw_actions))?;
        let mut actions = FileActions(raw_actions);
        let mut raw_attributes = std::mem::zeroed();
        check(libc::posix_spawnattr_init(&mut raw_attributes))?;
        let mut attributes = Attributes(raw_attributes);

        // The copy `dup2` makes is inheritable (glibc also clears
        // close-on-exec for a `dup2` of a descriptor onto itself).
        check(libc::posix_spawn_file_actions_adddup2(
            &mut actions.0,
            stdin.as_raw_fd(),
            0,
        ))?;
        check(add_close_from(&mut actions.0, 3))?;

        // The signal mask is inherited (no `POSIX_SPAWN_SETSIGMASK`).
        let mut default: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut default);
        libc::sigaddset(&mut default, libc::SIGPIPE);
        check(libc::posix_spawnattr_setsigdefault(
            &mut attributes.0,
            &default,
        ))?;
        let flags = libc::POSIX_SPAWN_SETSIGDEF as libc::c_short;
        check(libc::posix_spawnattr_setflags(&mut attributes.0, flags))?;

        check(libc::posix_spawn(
            &mut pid,
            program.as_ptr(),
            &actions.0,
            &attributes.0,
            argv.as_ptr(),
            envp.as_ptr(),
        ))?;
    }
    u32::try_from(pid)
        .map(Some)
        .map_err(|_| io::Error::other("posix_spawn returned a negative pid"))
}
