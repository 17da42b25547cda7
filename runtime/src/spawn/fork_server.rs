//! The fork server's side (`StartMethod::ForkServer`): this binary, held in
//! its load-time constructor before `main` with one thread, forking a child
//! per request of the one process that started it.
//!
//! The server is reached only through the socket on its fd 0 (its parent
//! holds the other end). Per `ForkRequest` frame (`protocol.rs`), carrying
//! the child's end of a control socket and the write end of a status pipe:
//!
//! 1. fork. The child drops every descriptor the server holds, puts the
//!    control socket on fd 0 and becomes a child like a re-executed one
//!    (`child::run_forked`): same call, same dispatch, same exit.
//! 2. In the server: open a pidfd for the child (it cannot be reaped yet:
//!    only this thread reaps), reply `Forked` with the pid and the pidfd
//!    (the parent waits, polls and signals through it), and keep the status
//!    pipe and a pidfd, watched by epoll.
//! 3. When the child's pidfd is readable, reap it (`waitid`), write its exit
//!    status to its status pipe in one 8-byte write, and close the pipe.
//!
//! **The spare.** Once no request has come for [`SPARE_AFTER_IDLE`], the
//! server forks the next child ahead of time: a spare, which drops the
//! server's descriptors, warms up (`warm_up`) and waits on a socket of its
//! own. The next request is then sent to the spare (its entry, daemon flag
//! and environment changes, with the control socket) instead of forking,
//! and the reply names the spare; from there on it is a child like any
//! other. A start thus waits for neither a fork nor the child's first page
//! faults. Requests in quick succession fork on demand (step 1): a spare
//! forked right after a start would compete for the CPU with the child just
//! started. A spare that dies unused is reaped; one whose server dies reads
//! the end of its socket and exits.
//!
//! The server exits when the parent's end closes, and is killed when the
//! parent dies (parent-death signal, set from a thread that lives as long
//! as the parent). Its daemon children die with it by their own
//! parent-death signal; the rest are left to run, reparented, as children
//! of a dead parent are under `Spawn`.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::{Timespec, epoll};
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use rustix::process::{PidfdFlags, Resource, Rlimit, Signal, WaitId, WaitIdOptions};

use super::protocol::{
    CallHeader, EXIT_BOOTSTRAP_FAILED, ForkReply, ForkRequest, Marker, ReportedExit,
};
use crate::sys::fork::{Forked, SingleThreaded};
use crate::wire::{self, FrameKind};

/// Runs the fork server of `marker.parent`; returns the server's exit code
/// when the parent has gone. A child it forks never returns from here.
pub(crate) fn serve(marker: &Marker) -> i32 {
    crate::sys::ignore_sigpipe();
    // Die with the parent; if it already died, the signal will never come.
    let _ = rustix::process::set_parent_process_death_signal(Some(Signal::KILL));
    if std::os::unix::process::parent_id() != marker.parent {
        return EXIT_BOOTSTRAP_FAILED;
    }
    let mut server = match Server::new() {
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
            super::child::run_forked(&target, marker.parent, control)
        }
        Served::Spare { assigned } => {
            // The spare keeps none of the server's descriptors either, but
            // its proof of being single-threaded, to change its environment.
            let Server {
                sock,
                epoll,
                running,
                nofile,
                single,
                pid,
                buf,
                spare,
                spare_due: _,
            } = server;
            drop((sock, epoll, running, buf, spare));
            run_spare(&single, nofile, pid, assigned, marker.parent)
        }
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
    let Ok((a, b)) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    ) else {
        return;
    };
    let header = CallHeader {
        entry: String::new(),
        process_name: String::new(),
    };
    let mut frame = wire::OutFrame::new();
    if frame.encode(&(&header, 0u64)).is_ok() && frame.send(a.as_fd(), FrameKind::Value).is_ok() {
        let mut buf = Vec::new();
        if let Ok(Some(frame)) = wire::recv_frame(b.as_fd(), &mut buf) {
            let _ = std::hint::black_box(wire::decode_prefix::<CallHeader>(&buf, frame.fds));
        }
    }
}

/// A spare child, forked ahead of the request it will serve.
#[derive(Debug)]
struct Spare {
    pid: u32,
    pidfd: OwnedFd,
    /// Where its request is sent (it holds the other end).
    sock: OwnedFd,
}

/// A spare child: waits for its request on `assigned`, then runs it as a
/// child forked on request does. Exits if the server goes first.
fn run_spare(
    single: &SingleThreaded,
    nofile: Rlimit,
    server: u32,
    assigned: OwnedFd,
    started_by: u32,
) -> ! {
    if nofile.current != nofile.maximum {
        let _ = rustix::process::setrlimit(Resource::Nofile, nofile);
    }
    warm_up();
    let mut buf = Vec::new();
    let (request, control) = match wire::recv_frame(assigned.as_fd(), &mut buf) {
        Ok(Some(frame)) if frame.kind == FrameKind::ForkRequest => match (
            wire::codec::decode::<ForkRequest>(&buf),
            <[OwnedFd; 1]>::try_from(frame.fds),
        ) {
            (Ok(request), Ok([control])) => (request, control),
            _ => super::child::exit(EXIT_BOOTSTRAP_FAILED),
        },
        // The server is gone (or out of step): nobody will ask.
        _ => super::child::exit(EXIT_BOOTSTRAP_FAILED),
    };
    drop(assigned);
    if !request.env.is_empty() {
        single.change_env(request.env.clear, &request.env.vars);
    }
    let target = Marker {
        parent: server,
        daemon: request.daemon,
        server: false,
        expected: 0,
        entry: request.entry,
    };
    super::child::run_forked(&target, started_by, control)
}

/// A forked child not yet reaped.
#[derive(Debug)]
struct Running {
    pidfd: OwnedFd,
    status: OwnedFd,
}

/// How long the server waits without a request before it forks a spare.
const SPARE_AFTER_IDLE: Duration = Duration::from_millis(1);

/// The epoll key of the request socket; a child's key is its pid.
const REQUESTS: u64 = u64::MAX;

#[derive(Debug)]
struct Server {
    sock: OwnedFd,
    epoll: OwnedFd,
    running: HashMap<u32, Running>,
    /// The descriptor limit the server was started with, which its
    /// children get back (the server raises its own: it holds two
    /// descriptors per running child).
    nofile: Rlimit,
    single: SingleThreaded,
    pid: u32,
    buf: Vec<u8>,
    /// The next child, forked before it is asked for, so that a start does
    /// not wait for a fork (`None` if forking it failed, or it died).
    spare: Option<Spare>,
    /// When to fork a spare, if there is none: once no request has come
    /// for [`SPARE_AFTER_IDLE`]. Requests in quick succession fork on
    /// demand instead, so a spare's fork and warm-up never compete with the
    /// children just started, nor delay the next request.
    spare_due: Option<Instant>,
}

enum Served {
    ParentGone,
    Failed(io::Error),
    /// This is a new child, to run `target` with `control` on fd 0.
    Forked {
        target: Marker,
        control: OwnedFd,
    },
    /// This is a new spare child, to wait for its request on `assigned`.
    Spare {
        assigned: OwnedFd,
    },
}

impl Server {
    fn new() -> io::Result<Server> {
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
        Ok(Server {
            sock,
            epoll,
            running: HashMap::new(),
            nofile,
            single,
            pid: std::process::id(),
            buf: Vec::new(),
            spare: None,
            spare_due: Instant::now().checked_add(SPARE_AFTER_IDLE),
        })
    }

    fn run(&mut self) -> Served {
        let mut events = Vec::with_capacity(64);
        loop {
            let mut timeout = None;
            if let Some(due) = self.spare_due.filter(|_| self.spare.is_none()) {
                let left = due.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    // Not again until the next request (or a spare's death).
                    self.spare_due = None;
                    if let Some(served) = self.fork_spare() {
                        return served;
                    }
                } else {
                    timeout = Some(Timespec {
                        tv_sec: left.as_secs().min(i64::MAX as u64) as i64,
                        tv_nsec: left.subsec_nanos() as _,
                    });
                }
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
            for event in &events {
                let key = event.data.u64();
                if key == REQUESTS {
                    if let Some(served) = self.request() {
                        return served;
                    }
                } else if let Ok(pid) = u32::try_from(key) {
                    self.reap(pid);
                }
            }
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
        let (request, control) = match self.spare.take() {
            Some(spare) => match self.assign(spare, request, control) {
                Ok((pid, pidfd)) => {
                    self.running.insert(pid, Running { pidfd, status });
                    return self.reply_started(pid);
                }
                // The spare died: fork a child now.
                Err(back) => back,
            },
            None => (request, control),
        };
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
                        expected: 0,
                        entry: request.entry,
                    },
                    control,
                })
            }
            Ok(Forked::Parent(pid)) => {
                drop(control);
                let raw = pid.as_raw_pid() as u32;
                let pidfd = match rustix::process::pidfd_open(pid, PidfdFlags::empty()) {
                    Ok(pidfd) => pidfd,
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

    /// Forks a spare child, to be handed the next request; `Some` in the
    /// spare itself. Without a spare, requests fork on demand.
    fn fork_spare(&mut self) -> Option<Served> {
        let (ours, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .ok()?;
        match crate::sys::fork::fork(&self.single) {
            Err(_) => None,
            Ok(Forked::Child) => {
                drop(ours);
                Some(Served::Spare { assigned: theirs })
            }
            Ok(Forked::Parent(pid)) => {
                drop(theirs);
                let raw = pid.as_raw_pid() as u32;
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
                match watched {
                    Some(pidfd) => {
                        self.spare = Some(Spare {
                            pid: raw,
                            pidfd,
                            sock: ours,
                        });
                    }
                    None => {
                        // Unwatchable: its end of the socket closes with
                        // ours, so it exits; reap it now.
                        drop(ours);
                        let _ = rustix::process::waitpid(
                            Some(pid),
                            rustix::process::WaitOptions::empty(),
                        );
                    }
                }
                None
            }
        }
    }

    /// Hands a request to the spare: on success the spare runs it (its pid
    /// and pidfd are returned); else the spare is reaped and the request
    /// handed back.
    fn assign(
        &mut self,
        spare: Spare,
        request: ForkRequest,
        control: OwnedFd,
    ) -> Result<(u32, OwnedFd), (ForkRequest, OwnedFd)> {
        let sent = super::protocol::send_message(
            spare.sock.as_fd(),
            FrameKind::ForkRequest,
            &request,
            &[control.as_fd()],
        );
        if sent.is_err() {
            let _ = epoll::delete(&self.epoll, &spare.pidfd);
            drop(spare.sock);
            let _ = rustix::process::pidfd_send_signal(&spare.pidfd, Signal::KILL);
            let _ =
                rustix::process::waitid(WaitId::PidFd(spare.pidfd.as_fd()), WaitIdOptions::EXITED);
            return Err((request, control));
        }
        // Our copy goes now: no later fork may inherit it.
        drop(control);
        Ok((spare.pid, spare.pidfd))
    }

    fn refuse(&mut self, message: String) -> Option<Served> {
        let reply = ForkReply::Failed { message };
        super::protocol::send_message(self.sock.as_fd(), FrameKind::Forked, &reply, &[])
            .err()
            .map(|_| Served::ParentGone)
    }

    /// Reaps child `pid` if it has exited, and reports how to its parent.
    fn reap(&mut self, pid: u32) {
        if let Some(spare) = self.spare.as_ref().filter(|s| s.pid == pid) {
            // A spare that died before it was asked for anything.
            if let Ok(None) = rustix::process::waitid(
                WaitId::PidFd(spare.pidfd.as_fd()),
                WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
            ) {
                return;
            }
            let _ = epoll::delete(&self.epoll, &spare.pidfd);
            self.spare = None;
            self.spare_due = Instant::now().checked_add(SPARE_AFTER_IDLE);
            return;
        }
        let Some(child) = self.running.get(&pid) else {
            return;
        };
        let exit = match rustix::process::waitid(
            WaitId::PidFd(child.pidfd.as_fd()),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
        ) {
            Ok(Some(status)) => match (status.exit_status(), status.terminating_signal()) {
                (Some(code), _) => Some(ReportedExit::Code(code)),
                (None, Some(sig)) => Some(ReportedExit::Signal(sig)),
                // Stopped or continued: not an exit (only EXITED was asked).
                (None, None) => return,
            },
            Ok(None) => return,
            // Not ours to reap after all: close the pipe without a status,
            // which the parent reads as "status lost".
            Err(_) => None,
        };
        let Some(child) = self.running.remove(&pid) else {
            return;
        };
        let _ = epoll::delete(&self.epoll, &child.pidfd);
        if let Some(exit) = exit {
            // One write under PIPE_BUF: all of it or nothing. A parent that
            // dropped the handle closed the read end: EPIPE, ignored.
            let _ = rustix::io::write(&child.status, &exit.encode());
        }
    }
}
