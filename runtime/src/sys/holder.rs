//! A fork-server child's memory holder: a second process that shares the
//! child's memory (`CLONE_VM`) and outlives it by a moment, so that the
//! child's exit does not wait for that memory to be torn down.
//!
//! When a process exits, the kernel unmaps all its memory before it tells
//! the parent: for a forked child, hundreds of page-table entries of the
//! binary's code that it faulted in, about half of the time from its last
//! instruction to its status, which `join` waits for. While another process
//! uses the same memory, the exit only drops a reference to it, and the
//! one left last does the unmapping. So a spare (`spawn/fork_server.rs`)
//! starts a holder ahead of time, off any start's path, where the parent
//! does not start children back to back (then both CPUs of a small
//! machine are busy, and a holder only moves the unmapping later and adds
//! a process; measured, it made nothing faster there): a process that
//! blocks every signal it can, closes every descriptor but a pidfd of the
//! child (which the child waits for: a socket of its must not stay open in
//! the holder), and waits on that pidfd. When the child has exited (its
//! status already on its way to the server), the holder exits too, and the
//! memory goes then.
//!
//! The holder runs under `SCHED_IDLE`: it is woken together with the
//! server, and it must not run before it, or before the parent, on a CPU
//! they need. The cost is that under a load that never leaves a CPU idle
//! it may wait to run; a child that used much memory (a peak of
//! [`LARGE_PEAK_KIB`]) puts its holder back to normal scheduling as it
//! exits from its entry ([`before_exit`]), so that a large memory does not
//! stay long, where the kernel lets it (`RLIMIT_NICE`, or root).
//!
//! The holder is the server's child (`CLONE_PARENT`), not the spare's: a
//! process left behind by its parent would be reaped by whoever adopts it,
//! which may be a PID 1 that reaps nothing. The server reaps it when it
//! exits (`SIGCHLD` through a signalfd).

use std::os::fd::AsRawFd;
use std::sync::OnceLock;

use rustix::process::{PidfdFlags, getpid, pidfd_open};

/// The holder of this process's memory, if it has one.
static HOLDER: OnceLock<i32> = OnceLock::new();

/// The peak resident memory above which a child puts its holder back to
/// normal scheduling before it exits: 64 MiB.
const LARGE_PEAK_KIB: i64 = 64 << 10;

/// The holder's stack. It needs a few hundred bytes; the rest is margin.
const STACK: usize = 64 << 10;

/// The holder's name (its `comm`, as `ps` shows it).
const NAME: &std::ffi::CStr = c"multiproc-hold";

/// What the holder is given: the pidfd to wait on (it closes every other
/// descriptor it inherited).
#[repr(C)]
struct Args {
    pidfd: u32,
}

/// Starts a holder of this process's memory (see the module docs). Does
/// nothing if this process has one already, or if any step fails: the
/// child then exits as it would have without one.
pub(crate) fn hold_memory() {
    // `close_range` came in Linux 5.9.
    if HOLDER.get().is_some() || !super::kernel_at_least(5, 9) {
        return;
    }
    let Ok(pidfd) = pidfd_open(getpid(), PidfdFlags::empty()) else {
        return;
    };
    // Above the standard streams, as `holder` counts on.
    let Ok(raw @ 3..) = u32::try_from(pidfd.as_raw_fd()) else {
        return;
    };
    // SAFETY: an anonymous private mapping at an address of the kernel's
    // choosing touches no existing memory; the result is checked.
    let stack = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            STACK,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if stack == libc::MAP_FAILED {
        return;
    }
    // Until the holder has closed its copies of this process's descriptors,
    // they stay open: a socket would not end when this process ends. Its
    // copy of `closed_w` goes with them, which this process waits for.
    let Ok((closed_r, closed_w)) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC) else {
        // SAFETY: nothing else knows of the mapping.
        unsafe {
            libc::munmap(stack, STACK);
        }
        return;
    };
    let base = stack.cast::<u8>();
    // The arguments sit at the bottom of the holder's stack, far below
    // where its frames grow down to: memory only the holder reads, never
    // freed (it goes with the address space).
    let args = base.cast::<Args>();
    // SAFETY: `args` is the start of a fresh, page-aligned, writable
    // mapping of `STACK` bytes, room for an `Args`.
    unsafe {
        args.write(Args { pidfd: raw });
    }
    // SAFETY: `STACK` bytes from `base` are that mapping; its end is
    // page-aligned, so 16-byte aligned as the ABI wants a stack.
    let top = unsafe { base.add(STACK) }.cast::<libc::c_void>();
    // SAFETY: `sigset_t` is plain data, and `sigfillset` and
    // `pthread_sigmask` only read and write the sets given.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: the sets are valid; `pthread_sigmask` changes this thread's
    // mask only, and it is restored below.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    // SAFETY: the new process shares this address space (`CLONE_VM`) and
    // runs `holder` on its own stack, `top`, which nothing else uses. It
    // has a copy of this process's descriptor table, not this one. It
    // inherits the mask just set, so no signal handler of this program
    // runs in it. `holder` reads only its `Args` and makes only system
    // calls that cannot fail here, so it touches no memory this process
    // uses: no `errno`, no thread-local (the thread pointer it shares with
    // this thread is never used), no lock, no allocation, and no panic
    // (whose count this thread would then see as its own). glibc's `clone`
    // then ends it with the `exit` system call.
    let pid = unsafe {
        libc::clone(
            holder,
            top,
            libc::CLONE_VM | libc::CLONE_PARENT,
            args.cast::<libc::c_void>(),
        )
    };
    // SAFETY: `old` is the mask read above.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
    }
    if pid <= 0 {
        // SAFETY: nothing else knows of the mapping.
        unsafe {
            libc::munmap(stack, STACK);
        }
        return;
    }
    // Its copy of the pidfd is what it waits on; ours is not needed.
    drop((pidfd, closed_w));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    let closed = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let bound = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: left.as_nanos().min(999_999_999) as _,
        };
        let mut fds = [rustix::event::PollFd::new(
            &closed_r,
            rustix::event::PollFlags::IN,
        )];
        match rustix::event::poll(&mut fds, Some(&bound)) {
            // A signal handled by this process: look again.
            Err(rustix::io::Errno::INTR) if !left.is_zero() => continue,
            ready => break matches!(ready, Ok(1)),
        }
    };
    if !closed {
        // Not run within a second (stopped?): ended, its copies with it.
        // SAFETY: `kill` sends a signal; `pid` is the holder, not yet
        // reaped (the server reaps it only once it has ended).
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        return;
    }
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid `sched_param`; lowering the priority of a
    // process of the same user needs no privilege. A failure leaves it at
    // normal priority, which is only slower. (It is set here, not in the
    // holder's first lines: under load, a holder waiting to run at idle
    // priority would keep this process waiting above.)
    unsafe {
        libc::sched_setscheduler(pid, libc::SCHED_IDLE, &param);
    }
    let _ = HOLDER.set(pid);
}

/// Before a forked child exits: if its memory peaked above
/// [`LARGE_PEAK_KIB`], its holder goes back to normal scheduling, so that
/// the memory is freed soon even on a busy machine. The kernel allows
/// that only where `RLIMIT_NICE` would let the holder's nice value be
/// set (or with `CAP_SYS_NICE`); elsewhere the holder keeps its idle
/// priority, and a busy machine frees that memory at the pace of an idle
/// task.
pub(crate) fn before_exit() {
    let Some(&pid) = HOLDER.get() else {
        return;
    };
    // SAFETY: `rusage` is plain data that `getrusage` fills.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid place for the kernel to write.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0
        || usage.ru_maxrss < LARGE_PEAK_KIB
    {
        return;
    }
    // Still our holder, by name and parent (the server's child, as we
    // are): one killed by someone else and reaped would leave its pid to
    // another process, whose scheduling is not ours to change.
    let ours = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let name = NAME.to_str().unwrap_or_default();
        let Some((head, tail)) = stat.rsplit_once(')') else {
            return false;
        };
        let ppid = tail
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        head.ends_with(&format!("({name}")) && ppid == Some(std::os::unix::process::parent_id())
    });
    if !ours {
        return;
    }
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid `sched_param`; the kernel checks whether
    // this process may make the change, and a refusal changes nothing.
    unsafe {
        libc::sched_setscheduler(pid, libc::SCHED_OTHER, &param);
    }
}

/// The holder's body: closes every inherited descriptor but the pidfd,
/// waits until that process has exited, and returns (glibc's `clone` then
/// makes the `exit` system call).
extern "C" fn holder(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Args` written before `clone`, which nothing
    // writes again.
    let Args { pidfd } = unsafe { arg.cast::<Args>().read() };
    // SAFETY: `close_range` (Linux 5.9, checked before `clone`) closes
    // this process's own copies (its table is not the child's), which
    // nothing in it uses; over valid ranges, without flags, it cannot
    // fail, so `syscall` writes no `errno`. `pidfd` is 3 or more (0 to 2
    // are the standard streams).
    // `PR_SET_NAME` copies at most 16 bytes of a NUL-terminated string
    // and cannot fail either.
    unsafe {
        libc::syscall(libc::SYS_close_range, 0u32, pidfd - 1, 0u32);
        libc::syscall(libc::SYS_close_range, pidfd + 1, u32::MAX, 0u32);
        libc::syscall(libc::SYS_prctl, libc::PR_SET_NAME, NAME.as_ptr());
    }
    // SAFETY: `pidfd` stays open in this process until it exits. (It is
    // at most `i32::MAX`, being a descriptor.)
    let pidfd = unsafe { rustix::fd::BorrowedFd::borrow_raw(pidfd as i32) };
    loop {
        let mut fds = [rustix::event::PollFd::new(
            &pidfd,
            rustix::event::PollFlags::IN,
        )];
        // Every signal is blocked, so nothing interrupts the wait but a
        // kill, which ends the process anyway.
        match rustix::event::poll(&mut fds, None) {
            Ok(n) if n > 0 => return 0,
            Ok(_) | Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return 0,
        }
    }
}
