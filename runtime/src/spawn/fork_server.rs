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
//! The server exits when the parent's end closes, and is killed when the
//! parent dies (parent-death signal, set from a thread that lives as long
//! as the parent). Its daemon children die with it by their own
//! parent-death signal; the rest are left to run, reparented, as children
//! of a dead parent are under `Spawn`.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::event::epoll;
use rustix::process::{PidfdFlags, Resource, Rlimit, Signal, WaitId, WaitIdOptions};

use super::protocol::{EXIT_BOOTSTRAP_FAILED, ForkReply, ForkRequest, Marker, ReportedExit};
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
    }
}

/// A forked child not yet reaped.
#[derive(Debug)]
struct Running {
    pidfd: OwnedFd,
    status: OwnedFd,
}

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
}

enum Served {
    ParentGone,
    Failed(io::Error),
    /// This is a new child, to run `target` with `control` on fd 0.
    Forked {
        target: Marker,
        control: OwnedFd,
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
        })
    }

    fn run(&mut self) -> Served {
        let mut events = Vec::with_capacity(64);
        loop {
            events.clear();
            match epoll::wait(
                &self.epoll,
                rustix::buffer::spare_capacity(&mut events),
                None,
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
                let reply = ForkReply::Started { pid: raw };
                let sent = super::protocol::send_message(
                    self.sock.as_fd(),
                    FrameKind::Forked,
                    &reply,
                    &[pidfd.as_fd()],
                );
                self.running.insert(raw, Running { pidfd, status });
                // The parent is gone; the child's control socket ends and it exits.
                sent.err().map(|_| Served::ParentGone)
            }
        }
    }

    fn refuse(&mut self, message: String) -> Option<Served> {
        let reply = ForkReply::Failed { message };
        super::protocol::send_message(self.sock.as_fd(), FrameKind::Forked, &reply, &[])
            .err()
            .map(|_| Served::ParentGone)
    }

    /// Reaps child `pid` if it has exited, and reports how to its parent.
    fn reap(&mut self, pid: u32) {
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
