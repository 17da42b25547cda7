//! The parent's side of the fork server: starts it on first use and asks
//! it for children (`StartMethod::ForkServer`; the server is
//! `fork_server.rs`).
//!
//! One server per process, reached only through the socket this module
//! holds (no path, no name). Requests are made one at a time, under a lock:
//! a request, then its reply. A server found dead is replaced by a new one
//! at the next start; a start in flight when it dies fails with
//! [`ErrorKind::Spawn`], never hangs.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};

use rustix::net::{AddressFamily, SocketFlags, SocketType};
use rustix::process::Signal;

use super::protocol::{BOOT_ENV, EnvChanges, ForkReply, ForkRequest, Marker};
use super::reaper::Child;
use crate::error::{Error, ErrorKind};
use crate::wire::{self, FrameKind};

/// A child the server forked, as its reply describes it.
#[derive(Debug)]
pub(crate) struct Forked {
    pub(crate) pid: u32,
    /// A pidfd for the child, opened by the server before it could reap it.
    pub(crate) pidfd: OwnedFd,
}

/// This process's fork server, while it runs.
#[derive(Debug)]
struct Server {
    sock: OwnedFd,
    /// The server process (our child), reaped by the reaper thread when it
    /// ends; not in the table of children (`active_children` does not list
    /// it, and exit does not wait for it).
    process: Arc<Child>,
}

static SERVER: Mutex<Option<Server>> = Mutex::new(None);

fn lock() -> MutexGuard<'static, Option<Server>> {
    SERVER.lock().unwrap_or_else(|p| p.into_inner())
}

/// Asks the fork server (started now if there is none, or it died) for a
/// child to run `entry`, handing it `control` (the child's end of its
/// control socket) and `status` (the write end of its status pipe).
/// The child changes its environment by `env` before it runs.
pub(crate) fn fork_child(
    entry: &str,
    daemon: bool,
    env: &EnvChanges,
    control: &OwnedFd,
    status: &OwnedFd,
) -> Result<Forked, Error> {
    let request = ForkRequest {
        entry: entry.to_string(),
        daemon,
        env: env.clone(),
    };
    let mut server = lock();
    // A server that died since the last start is replaced; one that dies
    // before it has read this request is replaced once more.
    for attempt in 0..2 {
        if server
            .as_ref()
            .is_none_or(|s| !matches!(s.process.try_reap(), Ok(None)))
        {
            *server = Some(start_server()?);
        }
        let Some(current) = server.as_ref() else {
            continue;
        };
        let sent = super::protocol::send_message(
            current.sock.as_fd(),
            FrameKind::ForkRequest,
            &request,
            &[control.as_fd(), status.as_fd()],
        );
        if let Err(e) = sent {
            retire(&mut server);
            if attempt == 0 {
                continue;
            }
            return Err(Error::new(ErrorKind::Spawn, "the fork server is gone").with_source(e));
        }
        return read_reply(&mut server);
    }
    Err(Error::new(ErrorKind::Spawn, "the fork server is gone"))
}

fn read_reply(server: &mut Option<Server>) -> Result<Forked, Error> {
    let Some(current) = server.as_ref() else {
        return Err(Error::new(ErrorKind::Spawn, "the fork server is gone"));
    };
    let pid = current.process.pid;
    let died = || {
        Error::new(
            ErrorKind::Spawn,
            format!("the fork server (pid {pid}) died before it started the child"),
        )
    };
    let mut buf = Vec::new();
    let frame = match wire::recv_frame(current.sock.as_fd(), &mut buf) {
        Ok(Some(frame)) if frame.kind == FrameKind::Forked => frame,
        Ok(Some(frame)) => {
            retire(server);
            return Err(Error::new(
                ErrorKind::Decode,
                format!("the fork server sent a {:?} frame", frame.kind),
            ));
        }
        Ok(None) => {
            retire(server);
            return Err(died());
        }
        Err(e) => {
            retire(server);
            return Err(died().with_source(e.into_error()));
        }
    };
    let reply = wire::codec::decode::<ForkReply>(&buf);
    match (reply, <[OwnedFd; 1]>::try_from(frame.fds)) {
        (Ok(ForkReply::Started { pid }), Ok([pidfd])) => Ok(Forked { pid, pidfd }),
        (Ok(ForkReply::Failed { message }), _) => Err(Error::new(
            ErrorKind::Spawn,
            format!("the fork server could not fork: {message}"),
        )),
        (Ok(ForkReply::Started { .. }), Err(_)) => {
            retire(server);
            Err(Error::new(
                ErrorKind::Decode,
                "the fork server's reply came without a pidfd",
            ))
        }
        (Err(message), _) => {
            retire(server);
            Err(Error::new(
                ErrorKind::Decode,
                format!("could not decode the fork server's reply: {message}"),
            ))
        }
    }
}

/// Stops using the server: kills it (it may be alive but out of step) and
/// leaves it to the reaper.
fn retire(server: &mut Option<Server>) {
    if let Some(old) = server.take() {
        let _ = old.process.signal(Signal::KILL);
    }
}

/// Starts the fork server: this binary with the server marker and its end
/// of the socket on fd 0, spawned from the daemon-spawner thread so that its
/// parent-death signal follows this process, not the calling thread.
fn start_server() -> Result<Server, Error> {
    let spawn_err = |e: std::io::Error| {
        Error::new(ErrorKind::Spawn, "could not start the fork server").with_source(e)
    };
    let (ours, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| spawn_err(e.into()))?;
    // Its children see this program's arguments, as re-executed ones do.
    let mut cmd = super::parent::this_program(theirs);
    cmd.env(
        BOOT_ENV,
        Marker::for_server(super::registry::loaded_count()),
    );
    let pid = super::parent::spawn_on_daemon_thread(cmd).map_err(spawn_err)?;
    let process = Child::untracked(pid, "fork server".to_string());
    if process.pidfd().is_none() {
        let _ = process.signal(Signal::KILL);
        let _ = process.wait(None);
        return Err(Error::new(
            ErrorKind::Spawn,
            "the fork server needs pidfds (Linux 5.4 or later)",
        ));
    }
    super::reaper::orphan(process.clone());
    Ok(Server {
        sock: ours,
        process,
    })
}
