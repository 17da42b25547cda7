//! The fork server's side (`StartMethod::ForkServer`): this binary, held in
//! its load-time constructor before `main` with one thread, forking a child
//! per request of the one process that started it.
//!
//! The server is reached only through the socket its parent put on its fd 0
//! (it moves it off, and puts `/dev/null` there, as a child does). Per
//! `ForkRequest` frame (`protocol.rs`), carrying the child's end of a
//! control socket and the write end of a status pipe:
//!
//! 1. fork. The child drops every descriptor the server holds except the
//!    control socket (its fd 0 is `/dev/null`, as the server's) and becomes
//!    a child like a re-executed one (`child::run_forked`): same call, same
//!    dispatch, same exit.
//! 2. In the server: open a pidfd for the child (it cannot be reaped yet:
//!    only this thread reaps), reply `Forked` with the pid and the pidfd
//!    (the parent waits, polls and signals through it), and keep the status
//!    pipe and a pidfd, watched by epoll.
//! 3. When the child's pidfd is readable, reap it (`waitid`), write its exit
//!    status to its status pipe in one 8-byte write, and close the pipe.
//!    Where the kernel keeps how a process ended for its pidfds (Linux 6.15
//!    and later), the server has the kernel reap its children as they exit
//!    (`Server::autoreap`) and reads the status from the pidfd instead; the
//!    parent reads it from its own pidfd first, so a child's end reaches
//!    `join` without waiting for the server.
//!
//! **The spare.** Once no request has come for [`SPARE_AFTER_IDLE`], the
//! server forks the next child ahead of time: a spare, which drops the
//! server's descriptors, warms up (`warm_up`) and waits for its request on
//! its control socket, already made. The server announces it to the
//! parent, unasked (`ForkReply::Spare`, with a pidfd and the read end of a
//! status pipe), and from then on watches and reaps it as any running
//! child. The parent takes the other end of that socket from the spare
//! itself (`pidfd_getfd`; the spare holds it until its request comes),
//! where it may (`Marker::fetch`), or else receives it in the announcement:
//! while a unix socket is in flight in a message, every unix socket closed
//! on the machine queues work for the kernel's collector of unreachable
//! sockets, and this one would be until the parent's next start. That
//! start sends its request (entry, daemon flag, environment changes)
//! straight to the spare, and then the call, both on the control socket,
//! without telling the server. A start thus waits for no fork, no reply
//! and no first page faults of the child. The spare closes a pipe when its
//! request comes, which the server looks at without being woken by it
//! (`Announced`). No other spare is forked until the announced one is
//! taken or reaped, and then not before the server has been idle again,
//! unless the parent starts children in quick succession (`Server::quick`:
//! its last start asked for a child, or took a spare within
//! [`SPARE_AFTER_IDLE`] of its fork).
//! Then, when a child ends, the server keeps [`QUICK_SPARES`] (two)
//! announced: if none is, it forks one and announces it before it writes
//! the child's status, so that the parent's next start finds it; the other
//! is forked after the status, while the parent starts the first, and
//! serves the start after that. So a parent starting and joining children
//! back to back waits for no fork at all. Before each spare's fork, the
//! server says one is coming (`ForkReply::SpareComing`; `NoSpare` if the
//! fork fails): a start that finds none then waits for it, rather than ask
//! for a fork behind it (where the parent learns of a child's end from its
//! pidfd, its next start can come before the server has forked). A spare
//! the parent drops exits: it reads the end of its socket, or, holding the
//! parent's end, is killed by the parent. One whose parent dies exits: it
//! reads the end of its socket, or, holding the parent's end, learns it
//! from a pidfd of the parent, which the server opened at its start. One
//! still holding it when the server dies lets go of it (`Held`): if the
//! parent never took it (the server died before announcing the spare), the
//! spare's socket ends and it exits.
//!
//! **The memory holder.** A warmed-up spare of the idle rule (not one
//! forked while the parent starts children in quick succession) starts a
//! holder of its memory (`sys::holder`), so that its exit, once it has
//! run, does not wait for that memory to be unmapped: the holder, a child
//! of the server, exits after it and does that while a CPU is free. The
//! server reaps holders on `SIGCHLD`, which it blocks and reads from a
//! signalfd (`Server::sweep`); they are the only children it holds no
//! pidfd for. (Where the kernel reaps the server's children, it reaps them
//! too.)
//!
//! The server exits when the parent's end closes, and is killed when the
//! parent dies (parent-death signal, set from a thread that lives as long
//! as the parent). Its daemon children die with it by their own
//! parent-death signal; the rest are left to run, reparented, as children
//! of a dead parent are under `Spawn`.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, epoll};
use rustix::process::{Pid, PidfdFlags, Resource, Rlimit, Signal, WaitId, WaitIdOptions};

use super::protocol::{
    CallHeader, EXIT_BOOTSTRAP_FAILED, ForkReply, ForkRequest, Marker, ReportedExit,
};
use crate::sys::fork::{Forked, SingleThreaded};
use crate::wire::{self, FrameKind};

/// Runs the fork server of `marker.parent`; returns the server's exit code
/// when the parent has gone. A child it forks never returns from here.
pub(crate) fn serve(marker: &Marker) -> i32 {
    crate::sys::ignore_sigpipe();
    // The server reaps its children to report how they ended, which it
    // cannot if it inherited an ignored SIGCHLD (the kernel would reap them
    // first, with no status kept before Linux 6.15; `Server::new` has it do
    // so only where it keeps them). Its children get the parent's
    // disposition back, as under `Spawn`.
    let sigchld_ignored = crate::sys::default_sigchld();
    // Die with the parent; if it already died, the signal will never come.
    let _ = rustix::process::set_parent_process_death_signal(Some(Signal::KILL));
    // Where the parent takes each spare's socket from it, a spare holds the
    // parent's end, and does not see it close if the parent dies: it waits
    // on this pidfd of the parent too. (Opened before the parent is known
    // to be alive, below, so it names that process and no later one.)
    let parent = match Pid::from_raw(marker.parent as i32) {
        Some(pid) if marker.fetch => rustix::process::pidfd_open(pid, PidfdFlags::empty()).ok(),
        _ => None,
    };
    // And a pidfd of the server itself, which such a spare watches too
    // (`Held`).
    let own = parent.as_ref().and_then(|_| {
        rustix::process::pidfd_open(rustix::process::getpid(), PidfdFlags::empty()).ok()
    });
    if std::os::unix::process::parent_id() != marker.parent {
        return EXIT_BOOTSTRAP_FAILED;
    }
    let mut server = match Server::new(parent, own) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("multiproc: the fork server could not start: {e}");
            return EXIT_BOOTSTRAP_FAILED;
        }
    };
    match server.run() {
        Served::ParentGone => 0,
        Served::Failed(e) => {
            eprintln!("multiproc: the fork server stopped: {e}");
            EXIT_BOOTSTRAP_FAILED
        }
        Served::Forked { target, control } => {
            // The new child keeps none of the server's descriptors.
            drop(server);
            restore_sigchld(sigchld_ignored);
            super::child::run_forked(&target, marker.parent, control)
        }
        Served::Spare {
            control,
            ours,
            taken,
            hold,
        } => {
            // The spare keeps none of the server's descriptors either, but
            // its proof of being single-threaded, to change its environment.
            let Server {
                sock,
                epoll,
                signals,
                running,
                nofile,
                single,
                pid,
                buf,
                announced,
                spare_due: _,
                quick: _,
                autoreap: _,
                parent,
                own,
            } = server;
            drop((sock, epoll, signals, running, buf, announced));
            restore_sigchld(sigchld_ignored);
            let held = ours.zip(parent).map(|(ours, parent)| Held {
                ours: Some(ours),
                parent,
                server: own,
            });
            run_spare(
                &single,
                nofile,
                pid,
                (control, held, taken),
                (marker.parent, hold),
            )
        }
    }
}

/// Gives a new child of the server the parent's `SIGCHLD` back: unblocked,
/// and ignored if the parent ignored it, else at its default (its children
/// wait to be reaped by it, whatever the server asked of the kernel).
fn restore_sigchld(ignored: bool) {
    crate::sys::unblock_sigchld();
    crate::sys::default_sigchld();
    if ignored {
        crate::sys::ignore_sigchld();
    }
}

/// What a spare does while nobody waits for it, so that its request does
/// not wait for it: the per-process state a child sets up first (thread
/// handle, stdio, panic hook, registry), and the code of a call and a
/// result going through a socket, which fork leaves to be faulted in again.
/// (It does not pre-write stack or heap pages: that made a child's private
/// memory 3x larger for no measurable gain.)
#[inline(never)]
fn warm_up() {
    use std::io::Write;
    let _ = std::thread::current();
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // Replaced by the child's own, naming its entry.
    super::child::install_panic_hook("");
    let _ = super::registry::find_loaded("");
    let _ = super::reaper::live();
    // A frame through a socket and back, as the child's call and result
    // will go: the code of that path is then mapped in this process.
    let Ok((a, b)) = crate::sys::stream_pair() else {
        return;
    };
    let header = CallHeader {
        entry: String::new(),
        process_name: String::new(),
        identity: Vec::new(),
    };
    let mut frame = wire::OutFrame::new();
    if frame.encode(&(&header, 0u64)).is_ok() && frame.send(a.as_fd(), FrameKind::Value).is_ok() {
        let mut buf = Vec::new();
        if let Ok(Some(frame)) = wire::recv_frame(b.as_fd(), &mut buf) {
            let _ = std::hint::black_box(wire::decode_prefix::<CallHeader>(&buf, frame.fds));
        }
    }
}

/// A spare child: waits for its request on `control`, its control socket,
/// then runs it as a child forked on request does, the call coming next on
/// the same socket; it closes `taken` to tell the server, which looks
/// without being woken. Exits if the parent drops it unused.
///
/// `held`, if given, holds the other end of that socket, which the parent
/// takes from this process (`pidfd_getfd`) rather than receive it in the
/// spare's announcement, until the request comes (see [`Held`]).
fn run_spare(
    single: &SingleThreaded,
    nofile: Rlimit,
    server: u32,
    (control, mut held, taken): (OwnedFd, Option<Held>, OwnedFd),
    (started_by, hold): (u32, bool),
) -> ! {
    let forked = Instant::now();
    if nofile.current != nofile.maximum {
        let _ = rustix::process::setrlimit(Resource::Nofile, nofile);
    }
    warm_up();
    // So that its exit, once it has run, does not wait for its memory to
    // be unmapped (`sys::holder`): for a spare of the idle rule, whose
    // start is likely to find a CPU free for that unmapping meanwhile. A
    // parent starting children back to back keeps both CPUs of a small
    // machine busy, and there a holder only added its own cost: the same
    // unmapping, later, and a process more.
    if hold {
        crate::sys::holder::hold_memory();
    }
    if let Some(held) = &mut held
        && !held.await_request(control.as_fd())
    {
        super::child::exit(EXIT_BOOTSTRAP_FAILED);
    }
    let mut buf = Vec::new();
    // One frame exactly: the call after it stays in the socket.
    let request = match wire::recv_frame(control.as_fd(), &mut buf) {
        Ok(Some(frame)) if frame.kind == FrameKind::ForkRequest && frame.fds.is_empty() => {
            match wire::codec::decode::<ForkRequest>(&buf) {
                Ok(request) => request,
                Err(_) => super::child::exit(EXIT_BOOTSTRAP_FAILED),
            }
        }
        // Dropped unused (or out of step): nobody will ask.
        _ => super::child::exit(EXIT_BOOTSTRAP_FAILED),
    };
    // The parent has its own end now.
    drop(held);
    if forked.elapsed() < SPARE_AFTER_IDLE {
        let _ = rustix::io::write(&taken, &TAKEN_QUICKLY);
    }
    drop(taken);
    if !request.env.is_empty() {
        single.change_env(request.env.clear, &request.env.vars);
    }
    let target = Marker {
        parent: server,
        daemon: request.daemon,
        server: false,
        fetch: false,
        expected: 0,
        entry: request.entry,
    };
    super::child::run_forked(&target, started_by, control)
}

/// What a spare holds while the parent may take its end of the spare's
/// control socket from it (`Marker::fetch`).
///
/// Holding that end, the spare would not see its socket end if the parent
/// dropped it, or died: the parent kills a spare it drops, and the spare
/// watches a pidfd of the parent. Nor would it if the parent never took
/// it: a spare whose server died before announcing it (or whose
/// announcement the parent had not read yet) would wait for the parent's
/// exit. So it watches a pidfd of the server too, and lets go of that end
/// when the server ends: if the parent never took it, its socket ends and
/// it exits; if the parent did, it waits on for its request. (The server's
/// end alone does not end it: the parent may have handed it a request
/// already, as a child started.)
struct Held {
    /// The parent's end of the spare's control socket, under the number
    /// its announcement gives.
    ours: Option<OwnedFd>,
    /// A pidfd of the parent, opened by the server at its start.
    parent: OwnedFd,
    /// A pidfd of the server, if it could open one.
    server: Option<OwnedFd>,
}

impl Held {
    /// Waits until `control` has bytes to read (a request, or the end of
    /// the socket) or the parent has ended; whether the former came.
    fn await_request(&mut self, control: std::os::fd::BorrowedFd<'_>) -> bool {
        loop {
            let server = match (&self.ours, &self.server) {
                (Some(_), Some(server)) => Some(server.as_fd()),
                _ => None,
            };
            let mut fds = [
                PollFd::new(&control, PollFlags::IN),
                PollFd::new(&self.parent, PollFlags::IN),
                PollFd::from_borrowed_fd(server.unwrap_or(control), PollFlags::IN),
            ];
            let watched = if server.is_some() { 3 } else { 2 };
            // (Retried on a signal; with no timeout, it returns only when
            // ready.)
            if crate::sys::poll::poll(&mut fds[..watched], None).is_err() {
                return false;
            }
            if !fds[0].revents().is_empty() {
                return true;
            }
            if !fds[1].revents().is_empty() {
                return false;
            }
            // The server has ended before the request came.
            self.ours = None;
        }
    }
}

/// A forked child not yet reaped.
#[derive(Debug)]
struct Running {
    pidfd: OwnedFd,
    status: OwnedFd,
}

/// How long the server waits without a request before it forks a spare.
const SPARE_AFTER_IDLE: Duration = Duration::from_millis(1);

/// How many spares the server keeps announced while the parent starts
/// children in quick succession (`Server::quick`). With one, the next
/// spare's fork came between a child's end and its status (the start
/// after `join` must find a spare); with two, the spare taken next was
/// forked one start earlier, and the fork that replaces it comes after the
/// status, while the parent starts that spare's call.
const QUICK_SPARES: usize = 2;

/// The epoll key of the request socket; a child's key is its pid.
const REQUESTS: u64 = u64::MAX;
/// The epoll key of the `SIGCHLD` signalfd.
const SIGNALS: u64 = u64::MAX - 1;

#[derive(Debug)]
struct Server {
    sock: OwnedFd,
    epoll: OwnedFd,
    /// Readable when a child has exited: the children the server holds no
    /// pidfd for, the memory holders of its spares (`sys::holder`), are
    /// reaped when it is.
    signals: OwnedFd,
    running: HashMap<u32, Running>,
    /// The descriptor limit the server was started with, which its
    /// children get back (the server raises its own: it holds two
    /// descriptors per running child).
    nofile: Rlimit,
    single: SingleThreaded,
    pid: u32,
    buf: Vec<u8>,
    /// The spares announced to the parent and not taken yet, oldest first
    /// (the parent takes them in that order): the next children, forked
    /// before they were asked for, so that a start waits for no fork. At
    /// most [`QUICK_SPARES`], and more than one only once `quick` (the
    /// idle timer forks one only when none is announced). They are also
    /// in `running`.
    announced: Vec<Announced>,
    /// When to fork a spare, if none is announced: once no request has
    /// come for [`SPARE_AFTER_IDLE`] (unless `reap` forks one first), so
    /// that a spare's fork and warm-up do not compete with the child just
    /// started, nor delay the next request.
    spare_due: Option<Instant>,
    /// Whether the parent's last start came soon after a child could have
    /// been ready for it: it asked for one (no spare was ready), or took
    /// a spare within [`SPARE_AFTER_IDLE`] of its fork. Then spares are
    /// forked as soon as a child ends, not once idle, up to
    /// [`QUICK_SPARES`]: the parent is starting children in quick
    /// succession.
    quick: bool,
    /// Whether the kernel reaps the server's children as they exit
    /// (`sys::reap_children_automatically`), and keeps how each ended for
    /// its pidfd, where the server and the parent both read it: where the
    /// kernel keeps exits (Linux 6.15 and later). Then the parent learns a
    /// child's end from its own pidfd, without waiting for the server.
    autoreap: bool,
    /// A pidfd of the parent, where it takes each spare's end of its
    /// control socket from the spare (`Marker::fetch`): the spare holds
    /// that end, and its announcement carries its number instead; and the
    /// spare waits on this pidfd too, since the end of its socket would
    /// not tell it that the parent has died.
    parent: Option<OwnedFd>,
    /// A pidfd of the server itself, where `parent` is: a spare watches it
    /// too ([`Held`]).
    own: Option<OwnedFd>,
}

/// A spare the parent holds, as far as the server knows.
#[derive(Debug)]
struct Announced {
    pid: u32,
    /// The read end of a pipe whose write end only the spare holds: it
    /// ends once the spare has its request (or has died). Not watched by
    /// epoll, so that taking a spare wakes nobody but the spare: the server
    /// looks at `check` (and whenever it wakes anyway).
    taken: OwnedFd,
    check: Instant,
    /// The time to the next look, doubled after each up to
    /// [`TAKEN_CHECK_MAX`].
    every: Duration,
}

/// What a spare writes to its `taken` pipe, before it closes it, if its
/// request came within [`SPARE_AFTER_IDLE`] of its fork.
const TAKEN_QUICKLY: [u8; 1] = *b"q";

/// The first timed look at whether an announced spare was taken comes this
/// long after its announcement; the looks then come ever less often, up to
/// one every [`TAKEN_CHECK_MAX`]. The server also looks whenever it wakes
/// for a request or a reap, which is when it usually finds out: a spare
/// that ran a short call is reaped soon after, and a start while a spare
/// runs a long one asks the server. The timer is for a long call followed
/// by no start, and it is slow on purpose: a wake-up of the server during
/// a start slows the start down by half.
const TAKEN_CHECK_FIRST: Duration = Duration::from_millis(100);
const TAKEN_CHECK_MAX: Duration = Duration::from_secs(5);

enum Served {
    ParentGone,
    Failed(io::Error),
    /// This is a new child, to run `target` with `control` as its control
    /// socket.
    Forked {
        target: Marker,
        control: OwnedFd,
    },
    /// This is a new spare child, to wait for its request on `control`,
    /// close `taken` when it comes, and then serve it there; with a memory
    /// holder if `hold` (a spare of the idle rule). It holds `ours`, the
    /// parent's end of `control`, for the parent to take, if the parent
    /// fetches it.
    Spare {
        control: OwnedFd,
        ours: Option<OwnedFd>,
        taken: OwnedFd,
        hold: bool,
    },
}

impl Server {
    fn new(parent: Option<OwnedFd>, own: Option<OwnedFd>) -> io::Result<Server> {
        let sock = super::child::take_control_socket()?;
        let single = SingleThreaded::check()?;
        let nofile = rustix::process::getrlimit(Resource::Nofile);
        if nofile.maximum != nofile.current {
            let _ = rustix::process::setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: nofile.maximum,
                    maximum: nofile.maximum,
                },
            );
        }
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        epoll::add(
            &epoll,
            &sock,
            epoll::EventData::new_u64(REQUESTS),
            epoll::EventFlags::IN,
        )?;
        let signals = crate::sys::sigchld_fd()?;
        let autoreap =
            crate::sys::pidfd::kernel_keeps_exits() && crate::sys::reap_children_automatically();
        epoll::add(
            &epoll,
            &signals,
            epoll::EventData::new_u64(SIGNALS),
            epoll::EventFlags::IN,
        )?;
        Ok(Server {
            sock,
            epoll,
            signals,
            running: HashMap::new(),
            nofile,
            single,
            pid: std::process::id(),
            buf: Vec::new(),
            announced: Vec::new(),
            spare_due: Instant::now().checked_add(SPARE_AFTER_IDLE),
            quick: false,
            autoreap,
            parent,
            own,
        })
    }

    fn run(&mut self) -> Served {
        let mut events = Vec::with_capacity(64);
        loop {
            let now = Instant::now();
            self.look_at_spares(now);
            let next = match self.announced.iter().map(|a| a.check).min() {
                Some(check) => Some(check),
                None => self.spare_due,
            };
            let mut timeout = None;
            if let Some(due) = next {
                let left = due.saturating_duration_since(now);
                if left.is_zero() && self.announced.is_empty() && !late_reports() {
                    // Not again until the next request (or a spare's end).
                    self.spare_due = None;
                    if let Some(served) = self.fork_spare(true) {
                        return served;
                    }
                    continue;
                }
                timeout = Some(Timespec {
                    tv_sec: left.as_secs().min(i64::MAX as u64) as i64,
                    tv_nsec: left.subsec_nanos() as _,
                });
            }
            events.clear();
            match epoll::wait(
                &self.epoll,
                rustix::buffer::spare_capacity(&mut events),
                timeout.as_ref(),
            ) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Served::Failed(e.into()),
            }
            let mut signalled = false;
            for event in &events {
                let key = event.data.u64();
                if key == SIGNALS {
                    signalled = true;
                } else if key == REQUESTS {
                    if let Some(served) = self.request() {
                        return served;
                    }
                } else if let Ok(pid) = u32::try_from(key)
                    && let Some(served) = self.reap(pid)
                {
                    return served;
                }
            }
            // After the children's own events, whose statuses come first.
            if signalled && let Some(served) = self.sweep() {
                return served;
            }
        }
    }

    /// Reaps every child that has exited: a memory holder (no pidfd, not
    /// in `running`) at once, a running child as its own event would.
    fn sweep(&mut self) -> Option<Served> {
        let mut info = [0u8; 128];
        while matches!(rustix::io::read(&self.signals, &mut info), Ok(n) if n > 0) {}
        while let Some(pid) = crate::sys::exited_child() {
            if self.running.contains_key(&pid) {
                if let Some(served) = self.reap(pid) {
                    return Some(served);
                }
                if self.running.contains_key(&pid) {
                    // Not reaped after all: leave it to its pidfd.
                    return None;
                }
            } else if !matches!(
                rustix::process::waitpid(
                    rustix::process::Pid::from_raw(pid as i32),
                    rustix::process::WaitOptions::NOHANG,
                ),
                Ok(Some(_))
            ) {
                return None;
            }
        }
        None
    }

    /// Forgets the announced spares that have been taken (or have died),
    /// noting whether the last was taken quickly; the next ones are forked
    /// when `reap` or the idle timer says. Looks at most when due, or when
    /// the server woke for something else.
    fn look_at_spares(&mut self, now: Instant) {
        if self.announced.is_empty() {
            return;
        }
        let ended: Vec<bool> = {
            let mut fds: Vec<PollFd<'_>> = self
                .announced
                .iter()
                .map(|a| PollFd::new(&a.taken, PollFlags::IN))
                .collect();
            match crate::sys::poll::poll(&mut fds, Some(Duration::ZERO)) {
                Ok(_) => fds.iter().map(|fd| !fd.revents().is_empty()).collect(),
                // Unreadable: counted as taken, the safe side.
                Err(_) => vec![true; fds.len()],
            }
        };
        let mut ended = ended.into_iter();
        self.announced.retain_mut(|announced| {
            if ended.next() != Some(true) {
                if now >= announced.check {
                    announced.every = (announced.every * 2).min(TAKEN_CHECK_MAX);
                    announced.check = now.checked_add(announced.every).unwrap_or(now);
                }
                return true;
            }
            let mut byte = [0u8; 1];
            self.quick = matches!(rustix::io::read(&announced.taken, &mut byte), Ok(1))
                && byte == TAKEN_QUICKLY;
            false
        });
        if self.announced.is_empty() {
            self.spare_due = now.checked_add(SPARE_AFTER_IDLE);
        }
    }

    /// Serves one request; `Some` when the server is done, or in a new child.
    fn request(&mut self) -> Option<Served> {
        let frame = match wire::recv_frame(self.sock.as_fd(), &mut self.buf) {
            Ok(Some(frame)) => frame,
            // The parent closed its end (or died, or sent garbage that
            // leaves the stream out of step): nobody is left to serve.
            Ok(None) | Err(_) => return Some(Served::ParentGone),
        };
        let request = match frame.kind {
            FrameKind::ForkRequest => wire::codec::decode::<ForkRequest>(&self.buf),
            other => Err(format!("expected a fork request, got a {other:?} frame")),
        };
        let (request, [control, status]) = match (request, <[OwnedFd; 2]>::try_from(frame.fds)) {
            (Ok(request), Ok(fds)) => (request, fds),
            (Err(message), _) => return self.refuse(message),
            (Ok(_), Err(fds)) => {
                return self.refuse(format!(
                    "a fork request carries 2 descriptors, not {}",
                    fds.len()
                ));
            }
        };
        self.spare_due = Instant::now().checked_add(SPARE_AFTER_IDLE);
        // Asked, so no spare was ready.
        self.quick = true;
        match crate::sys::fork::fork(&self.single) {
            Err(e) => self.refuse(format!("fork failed: {e}")),
            Ok(Forked::Child) => {
                drop(status);
                // `Process::env` and co.: a forked child has no exec to set
                // its environment, so it changes its own, still one thread.
                if !request.env.is_empty() {
                    self.single.change_env(request.env.clear, &request.env.vars);
                }
                if self.nofile.current != self.nofile.maximum {
                    let _ = rustix::process::setrlimit(Resource::Nofile, self.nofile);
                }
                Some(Served::Forked {
                    target: Marker {
                        parent: self.pid,
                        daemon: request.daemon,
                        server: false,
                        fetch: false,
                        expected: 0,
                        entry: request.entry,
                    },
                    control,
                })
            }
            Ok(Forked::Parent(pid)) => {
                drop(control);
                let raw = pid.as_raw_pid() as u32;
                self.forget_reused(raw);
                let pidfd = match rustix::process::pidfd_open(pid, PidfdFlags::empty()) {
                    Ok(pidfd) => pidfd,
                    // Ended already, before its call came, and reaped by
                    // the kernel (`autoreap`): its pid may be another's.
                    Err(rustix::io::Errno::SRCH) if self.autoreap => {
                        return self.refuse("the child ended as soon as it was forked".into());
                    }
                    Err(e) => {
                        // Unwatchable: stop it now rather than leave it
                        // running with no way to report on it.
                        let _ = rustix::process::kill_process(pid, Signal::KILL);
                        let _ = rustix::process::waitpid(
                            Some(pid),
                            rustix::process::WaitOptions::empty(),
                        );
                        return self.refuse(format!("pidfd_open failed: {e}"));
                    }
                };
                if let Err(e) = epoll::add(
                    &self.epoll,
                    &pidfd,
                    epoll::EventData::new_u64(u64::from(raw)),
                    epoll::EventFlags::IN,
                ) {
                    let _ = rustix::process::pidfd_send_signal(&pidfd, Signal::KILL);
                    let _ =
                        rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
                    return self.refuse(format!("epoll_ctl failed: {e}"));
                }
                self.running.insert(raw, Running { pidfd, status });
                self.reply_started(raw)
            }
        }
    }

    /// Tells the parent that child `pid` (in `running`) has started.
    fn reply_started(&mut self, pid: u32) -> Option<Served> {
        let Some(child) = self.running.get(&pid) else {
            return self.refuse(format!("child {pid} is not running"));
        };
        let reply = ForkReply::Started { pid };
        let sent = super::protocol::send_message(
            self.sock.as_fd(),
            FrameKind::Forked,
            &reply,
            &[child.pidfd.as_fd()],
        );
        // The parent is gone; the child's control socket ends and it exits.
        sent.err().map(|_| Served::ParentGone)
    }

    /// Forks a spare child and announces it to the parent, which hands it
    /// its next request; `Some` in the spare itself, or if the parent has
    /// gone. Without a spare, requests fork on demand. `idle`: forked by
    /// the idle rule (not for starts in quick succession), so the spare
    /// starts a memory holder.
    fn fork_spare(&mut self, idle: bool) -> Option<Served> {
        // The crate's tests make it fail, as a fork can.
        #[cfg(feature = "test-hooks")]
        if std::env::var_os(super::protocol::NO_SPARE_ENV).is_some() {
            return None;
        }
        let (ours, control) = crate::sys::stream_pair().ok()?;
        let (is_taken, taken) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).ok()?;
        let (status_r, status_w) = rustix::pipe::pipe_with(
            rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
        )
        .ok()?;
        // A start that finds no spare now waits for this one rather than
        // ask for a fork behind it.
        if !self.tell(ForkReply::SpareComing) {
            return Some(Served::ParentGone);
        }
        // The crate's tests make a start come while this fork is under way.
        #[cfg(feature = "test-hooks")]
        delay_for_tests(super::protocol::SPARE_DELAY_ENV);
        let pid = match crate::sys::fork::fork(&self.single) {
            Err(_) => return self.no_spare(),
            Ok(Forked::Child) => {
                drop((is_taken, status_r, status_w));
                let ours = self.parent.is_some().then_some(ours);
                return Some(Served::Spare {
                    control,
                    ours,
                    taken,
                    hold: idle,
                });
            }
            Ok(Forked::Parent(pid)) => pid,
        };
        drop((control, taken));
        let raw = pid.as_raw_pid() as u32;
        self.forget_reused(raw);
        let watched = rustix::process::pidfd_open(pid, PidfdFlags::empty())
            .ok()
            .filter(|pidfd| {
                epoll::add(
                    &self.epoll,
                    pidfd,
                    epoll::EventData::new_u64(u64::from(raw)),
                    epoll::EventFlags::IN,
                )
                .is_ok()
            });
        let Some(pidfd) = watched else {
            // Unwatchable: stopped (it may hold our end of its socket, and
            // never see it close), and reaped now.
            let _ = rustix::process::kill_process(pid, Signal::KILL);
            drop(ours);
            let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
            return self.no_spare();
        };
        // The crate's tests make the server die before it announces a
        // spare.
        #[cfg(feature = "test-hooks")]
        delay_for_tests(super::protocol::ANNOUNCE_DELAY_ENV);
        // Where the parent fetches `ours`, the spare holds it under the
        // same number until then: no socket in flight.
        let sending = [pidfd.as_fd(), ours.as_fd(), status_r.as_fd()];
        let fetched = [pidfd.as_fd(), status_r.as_fd()];
        let (control, fds) = match self.parent {
            Some(_) => (Some(ours.as_raw_fd()), &fetched[..]),
            None => (None, &sending[..]),
        };
        let sent = super::protocol::send_message(
            self.sock.as_fd(),
            FrameKind::Forked,
            &ForkReply::Spare { pid: raw, control },
            fds,
        );
        drop(ours);
        // From here the spare is a running child: reaped when it exits,
        // whether or not it was ever handed a request.
        self.running.insert(
            raw,
            Running {
                pidfd,
                status: status_w,
            },
        );
        if sent.is_err() {
            // The parent is gone; the spare's socket ends and it exits.
            return Some(Served::ParentGone);
        }
        self.announced.push(Announced {
            pid: raw,
            taken: is_taken,
            check: Instant::now()
                .checked_add(TAKEN_CHECK_FIRST)
                .unwrap_or_else(Instant::now),
            every: TAKEN_CHECK_FIRST,
        });
        None
    }

    /// Tells the parent, unasked; `false` if it has gone.
    fn tell(&self, what: ForkReply) -> bool {
        super::protocol::send_message(self.sock.as_fd(), FrameKind::Forked, &what, &[]).is_ok()
    }

    /// The spare said to be coming could not be forked: says so.
    fn no_spare(&self) -> Option<Served> {
        if self.tell(ForkReply::NoSpare) {
            None
        } else {
            Some(Served::ParentGone)
        }
    }

    /// Reports the end of a child whose pid `pid`, just given to a new
    /// child, was: where the kernel reaps the server's children, a pid can
    /// be reused before the event of the pidfd of the child that had it is
    /// handled (only after every other pid was taken, so very rarely).
    fn forget_reused(&mut self, pid: u32) {
        let Some(old) = self.running.remove(&pid) else {
            return;
        };
        let _ = epoll::delete(&self.epoll, &old.pidfd);
        if let Some(at) = self.announced.iter().position(|a| a.pid == pid) {
            self.announced.remove(at);
            if self.announced.is_empty() {
                self.spare_due = Instant::now().checked_add(SPARE_AFTER_IDLE);
            }
        }
        if let Some(exit) = crate::sys::pidfd::kept_exit(old.pidfd.as_fd()) {
            let _ = rustix::io::write(&old.status, &ReportedExit::kept(exit).encode());
        }
    }

    fn refuse(&mut self, message: String) -> Option<Served> {
        let reply = ForkReply::Failed { message };
        super::protocol::send_message(self.sock.as_fd(), FrameKind::Forked, &reply, &[])
            .err()
            .map(|_| Served::ParentGone)
    }

    /// Reaps child `pid` if it has exited, and reports how to its parent.
    /// If the parent starts children in quick succession (`quick`), also
    /// forks spares and announces them, up to [`QUICK_SPARES`]: a child's
    /// end is when such a parent starts the next. If none is announced,
    /// the first comes before the status is written, so that the start
    /// made once the status is read finds it; the rest come after, off
    /// that path. `Some` in a new spare, or if the parent has gone.
    ///
    /// Otherwise spares wait for the idle timer: forking here delays the
    /// status, or competes with the next start, a cost worth paying only
    /// when the parent's next start would otherwise wait for a fork of its
    /// own.
    fn reap(&mut self, pid: u32) -> Option<Served> {
        // The crate's tests make the server late.
        #[cfg(feature = "test-hooks")]
        delay_for_tests(super::protocol::LATE_REPORTS_ENV);
        let child = self.running.get(&pid)?;
        let exit = if self.autoreap {
            match crate::sys::pidfd::kept_exit(child.pidfd.as_fd()) {
                Some(exit) => Some(ReportedExit::kept(exit)),
                // Ended, and released by the kernel a moment later, when
                // it keeps the status: wait for the pidfd's hang-up,
                // which says so (or for as long as a tracer holds it).
                // (Should that change fail, its readable pidfd wakes the
                // server again at once.)
                None if !released(child.pidfd.as_fd()) => {
                    let _ = epoll::modify(
                        &self.epoll,
                        &child.pidfd,
                        epoll::EventData::new_u64(u64::from(pid)),
                        epoll::EventFlags::empty(),
                    );
                    return None;
                }
                // Released with no status kept: lost.
                None => None,
            }
        } else {
            self.waited(child)?
        };
        self.reported(pid, exit)
    }

    /// Reaps `child` if it has exited (`waitid`): its status, `Some(None)`
    /// if it was not ours to reap, `None` if it has not exited.
    fn waited(&self, child: &Running) -> Option<Option<ReportedExit>> {
        Some(
            match rustix::process::waitid(
                WaitId::PidFd(child.pidfd.as_fd()),
                WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
            ) {
                Ok(Some(status)) => match (status.exit_status(), status.terminating_signal()) {
                    (Some(code), _) => Some(ReportedExit::Code(code)),
                    (None, Some(sig)) => Some(ReportedExit::Signal(sig)),
                    // Stopped or continued: not an exit (only EXITED was asked).
                    (None, None) => return None,
                },
                Ok(None) => return None,
                // Not ours to reap after all: close the pipe without a status,
                // which the parent reads as "status lost".
                Err(_) => None,
            },
        )
    }

    /// Reports the end of child `pid`, reaped, with `exit` (`None`: lost),
    /// and forks spares as `reap` says.
    fn reported(&mut self, pid: u32, exit: Option<ReportedExit>) -> Option<Served> {
        let child = self.running.remove(&pid)?;
        let _ = epoll::delete(&self.epoll, &child.pidfd);
        let now = Instant::now();
        self.look_at_spares(now);
        if let Some(at) = self.announced.iter().position(|a| a.pid == pid) {
            // An announced spare has ended, and its pipe with it.
            self.announced.remove(at);
            if self.announced.is_empty() {
                self.spare_due = now.checked_add(SPARE_AFTER_IDLE);
            }
        }
        // The crate's tests follow the idle rule alone.
        #[cfg(feature = "test-hooks")]
        if std::env::var_os(super::protocol::IDLE_SPARES_ONLY_ENV).is_some() {
            self.quick = false;
        }
        // Announced before the status is written, so that the start made
        // once the status is read finds it. (The spare returns here, and
        // drops its copy of `child` unwritten. If the fork fails, the idle
        // timer tries again.)
        if self.quick
            && self.announced.is_empty()
            && let Some(served) = self.fork_spare(false)
        {
            return Some(served);
        }
        if let Some(exit) = exit {
            // One write under PIPE_BUF: all of it or nothing. A parent that
            // dropped the handle closed the read end: EPIPE, ignored.
            let _ = rustix::io::write(&child.status, &exit.encode());
        }
        drop(child);
        // One more, while the parent reads the status and starts the spare
        // announced: it will serve the start after that. (If the fork
        // fails, the next end tries again.)
        if self.quick && self.announced.len() < QUICK_SPARES {
            return self.fork_spare(false);
        }
        None
    }
}

/// Sleeps for the milliseconds the crate's tests set in variable `name`,
/// if any.
#[cfg(feature = "test-hooks")]
fn delay_for_tests(name: &str) {
    if let Some(ms) = std::env::var(name).ok().and_then(|ms| ms.parse().ok()) {
        std::thread::sleep(Duration::from_millis(ms));
    }
}

/// Whether the crate's tests have the server fork no spare by the idle
/// rule (and handle each end late, `Server::reap`).
fn late_reports() -> bool {
    #[cfg(feature = "test-hooks")]
    if std::env::var_os(super::protocol::LATE_REPORTS_ENV).is_some() {
        return true;
    }
    false
}

/// Whether the process of `pidfd` has been released by the kernel (reaped):
/// its pidfd hangs up.
fn released(pidfd: std::os::fd::BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(&pidfd, PollFlags::empty())];
    matches!(crate::sys::poll::poll(&mut fds, Some(Duration::ZERO)), Ok(n) if n > 0)
        && fds[0].revents().contains(PollFlags::HUP)
}
