//! The parent's side of the fork server: starts it on first use and asks
//! it for children (`StartMethod::ForkServer`; the server is
//! `fork_server.rs`).
//!
//! One server per process, reached only through the socket this module
//! holds (no path, no name). Requests are made one at a time, under a lock:
//! a request, then its reply. A server found dead is replaced by a new one
//! at the next start; a start in flight when it dies fails with
//! [`ErrorKind::Spawn`], never hangs.
//!
//! **Spares.** Between requests the server may announce a spare: a child it
//! forked ahead of time, with a pidfd and its status pipe (a `Forked` frame
//! the server sends unasked). Our end of its control socket, where it
//! waits for its request, we take from the spare itself (`pidfd_getfd`), so
//! that no unix socket is in flight meanwhile (see `fork_server.rs`);
//! where this process may not (`start_server`), it comes in the
//! announcement. The next start writes the request to the control socket,
//! and then a small call, straight to the spare: it waits for no reply, makes
//! no socketpair, passes no descriptor, wakes only the child, and does not
//! wake the server at all (a wake-up of another process there costs more
//! than all the rest on a small machine: the scheduler then spreads the
//! child's run and exit across CPUs). The server finds out later that the
//! spare was taken (`fork_server.rs`). Announcements are read when a start
//! looks for one, or while it waits for a reply, and spares are taken
//! oldest first. The server also says when it begins to fork a spare: a
//! start that finds none, but was told one is coming, waits for it
//! (`Server::await_spare`) rather than ask for a fork behind it; one told
//! of none first waits for the server to report the ends of its children
//! that `join` learnt of from their pidfds (`end_unreported`), since the
//! server says a spare is coming before it reports the end that made it
//! fork one (`Server::await_reports`). The server announces at most two at
//! a time; should more than [`MAX_SPARES`] be held, the oldest are dropped,
//! and exit (a spare that holds our end of its socket is killed).

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::process::Signal;

use super::protocol::{BOOT_ENV, EnvChanges, ForkReply, ForkRequest, Marker};
use super::reaper::Child;
use crate::error::{Error, ErrorKind};
use crate::wire::{self, FrameKind};

/// A child the server forked, as its reply or its announcement describes
/// it.
#[derive(Debug)]
pub(crate) struct Forked {
    pub(crate) pid: u32,
    /// The pid of the server that forked it (and reports its end).
    pub(crate) server: u32,
    /// A pidfd for the child, opened by the server before it could reap it.
    pub(crate) pidfd: OwnedFd,
    /// The read end of the child's status pipe (non-blocking), where the
    /// server writes its exit status once it has reaped it.
    pub(crate) status: OwnedFd,
}

/// A spare the server announced: a forked child waiting for its request.
/// Dropped unused, it exits: it reads the end of its socket, or, if it
/// holds a copy of our end (we fetched ours from it), it is killed.
#[derive(Debug)]
struct Spare {
    /// The child, and our end of its control socket, where its request
    /// goes first; taken when it is handed a request.
    parts: Option<(Forked, OwnedFd)>,
    /// Whether the spare holds a copy of our end of its control socket
    /// until its request comes (`Marker::fetch`).
    holds_ours: bool,
}

impl Spare {
    /// Our end of its control socket.
    fn control(&self) -> Option<BorrowedFd<'_>> {
        self.parts.as_ref().map(|(_, control)| control.as_fd())
    }
}

impl Drop for Spare {
    fn drop(&mut self) {
        if let Some((child, _)) = &self.parts
            && self.holds_ours
        {
            // Waiting for a request that will not come, and holding our
            // end of its socket, it would never see that end close.
            let _ = rustix::process::pidfd_send_signal(&child.pidfd, Signal::KILL);
        }
    }
}

/// This process's fork server, while it runs.
#[derive(Debug)]
struct Server {
    sock: OwnedFd,
    /// The server process (our child), reaped by the reaper thread when it
    /// ends; not in the table of children (`active_children` does not list
    /// it, and exit does not wait for it).
    process: Arc<Child>,
    /// The spares announced and not taken yet, oldest first. Dropping one
    /// closes its socket, and the spare exits.
    spares: VecDeque<Spare>,
    /// How many spares the server said it is forking, not announced yet.
    coming: usize,
}

/// The most spares kept at once (the server announces fewer).
const MAX_SPARES: usize = 4;

static SERVER: Mutex<Option<Server>> = Mutex::new(None);

/// How long a start waits for the server's reply (it takes well under a
/// millisecond) before it takes the server for stopped or wedged.
const REPLY_WITHIN: Duration = Duration::from_secs(5);

fn lock() -> MutexGuard<'static, Option<Server>> {
    SERVER.lock().unwrap_or_else(|p| p.into_inner())
}

/// Asks the fork server (started now if there is none, or it died) for a
/// child to run `entry`: a spare it announced, or one it forks now. The
/// child changes its environment by `env` before it runs. `early` may
/// write a small call to our end of the child's control socket: for a
/// spare right after its request (so it finds the call at once), for a
/// child forked on request once the server has said it forked it (a start
/// that fails never leaves a call for a child to run). It is called once,
/// unless this fails. Returns the child and our end of its control socket.
pub(crate) fn fork_child(
    entry: &str,
    daemon: bool,
    env: &EnvChanges,
    early: &mut dyn FnMut(BorrowedFd<'_>),
) -> Result<(Forked, OwnedFd), Error> {
    let request = ForkRequest {
        entry: entry.to_string(),
        daemon,
        env: env.clone(),
    };
    let mut server = lock();
    // Made once: a retry reuses it.
    let mut pair: Option<(OwnedFd, OwnedFd)> = None;
    // A server that died since the last start is replaced; one that dies
    // before it has read this request is replaced once more.
    for attempt in 0..2 {
        if server
            .as_ref()
            .is_none_or(|s| !matches!(s.process.try_reap(), Ok(None)))
        {
            // Dropping the old one drops its spare, which then exits.
            *server = Some(start_server()?);
        }
        let Some(current) = server.as_mut() else {
            continue;
        };
        if let Err(e) = current.take_announcements() {
            retire(&mut server);
            if attempt == 0 {
                continue;
            }
            return Err(e);
        }
        // The end of a child of this server may not be reported yet
        // (its pidfd said first): the server may fork a spare before it
        // reports it, and says so first.
        if pair.is_none()
            && current.spares.is_empty()
            && current.coming == 0
            && let Err(failed) = current.await_reports()
        {
            return Err(give_up_on(&mut server, failed));
        }
        // A start waiting for its server fails if the server dies, as one
        // waiting for a reply does.
        if pair.is_none()
            && current.spares.is_empty()
            && current.coming > 0
            && let Err(failed) = current.await_spare()
        {
            return Err(give_up_on(&mut server, failed));
        }
        while pair.is_none()
            && let Some(spare) = current.spares.pop_front()
        {
            if let Some(started) = current.assign(spare, &request, early) {
                #[cfg(feature = "test-hooks")]
                FROM_SPARE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(started);
            }
        }
        // `early` is not called on this path before the reply: a server
        // that forks and dies before replying fails this start, and its
        // child must then find no call to run (it reads the end of the
        // socket and exits), or a retry would run the entry twice.
        let (ours, theirs) = match pair.take() {
            Some(pair) => pair,
            None => crate::sys::stream_pair().map_err(|e| {
                Error::new(ErrorKind::Spawn, "could not make a control socket").with_source(e)
            })?,
        };
        let (status_r, status_w) = rustix::pipe::pipe_with(
            rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
        )
        .map_err(|e| {
            Error::new(ErrorKind::Spawn, "could not make a status pipe")
                .with_source(std::io::Error::from(e))
        })?;
        let sent = super::protocol::send_message(
            current.sock.as_fd(),
            FrameKind::ForkRequest,
            &request,
            &[theirs.as_fd(), status_w.as_fd()],
        );
        if let Err(e) = sent {
            retire(&mut server);
            if attempt == 0 {
                pair = Some((ours, theirs));
                continue;
            }
            return Err(Error::new(ErrorKind::Spawn, "the fork server is gone").with_source(e));
        }
        // Only the child holds its end now, so its death ends our stream.
        drop((theirs, status_w));
        #[cfg(feature = "test-hooks")]
        ASKED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // A server that could not fork serves on; one out of step does not.
        return match current.read_reply(status_r) {
            Ok(reply) => reply.map(|child| {
                early(ours.as_fd());
                (child, ours)
            }),
            Err(failed) => Err(give_up_on(&mut server, failed)),
        };
    }
    Err(Error::new(ErrorKind::Spawn, "the fork server is gone"))
}

/// Stops using the server after a wait on it failed, and returns why:
/// `silent` (stopped, or wedged), it is set aside, not killed, so that the
/// children it forked, daemons too, live on; otherwise (dead, or out of
/// step) it is retired.
fn give_up_on(server: &mut Option<Server>, (error, silent): (Error, bool)) -> Error {
    if silent {
        set_aside(server);
    } else {
        retire(server);
    }
    error
}

/// Starts that asked the server for a child.
#[cfg(feature = "test-hooks")]
static ASKED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Starts a spare served.
#[cfg(feature = "test-hooks")]
static FROM_SPARE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many starts so far asked the server for a child, and how many went
/// to a spare. Not public API: for the fork server's tests.
#[doc(hidden)]
#[cfg(feature = "test-hooks")]
pub fn fork_server_starts() -> (u64, u64) {
    use std::sync::atomic::Ordering::Relaxed;
    (ASKED.load(Relaxed), FROM_SPARE.load(Relaxed))
}

/// How many spares this process holds now (reading the announcements
/// waiting on the server's socket). Not public API: for the fork server's
/// tests.
#[doc(hidden)]
#[cfg(feature = "test-hooks")]
pub fn fork_server_spares() -> usize {
    after_announcements(|current| current.spares.len())
}

/// How many spares the server has said it is forking and not announced
/// yet (reading the announcements waiting first). Not public API: for the
/// fork server's tests.
#[doc(hidden)]
#[cfg(feature = "test-hooks")]
pub fn fork_server_coming() -> usize {
    after_announcements(|current| current.coming)
}

/// `count` of this process's server once the announcements waiting are
/// read; 0 without a server, or if they cannot be.
#[cfg(feature = "test-hooks")]
fn after_announcements(count: impl FnOnce(&Server) -> usize) -> usize {
    let mut server = lock();
    match server.as_mut() {
        Some(current) => match current.take_announcements() {
            Ok(()) => count(current),
            Err(_) => 0,
        },
        None => 0,
    }
}

/// Drops the spares this process holds, reading the announcements waiting
/// first (they exit), and its copies of the status pipes of ends not yet
/// reported. Not public API: for tests that count this process's
/// descriptors, which these would otherwise add to.
#[doc(hidden)]
#[cfg(feature = "test-hooks")]
pub fn fork_server_drop_spares() {
    if let Some(current) = lock().as_mut() {
        let _ = current.take_announcements();
        current.spares.clear();
    }
    UNREPORTED.lock().unwrap_or_else(|p| p.into_inner()).clear();
}

/// A `Forked` frame, as the server sends it: a reply or an announcement.
enum FromServer {
    Reply(Result<Forked, Error>),
    Spare(Spare),
    /// A spare is being forked (`true`), or could not be had (`false`):
    /// its fork failed, or it was announced dead.
    Coming(bool),
}

impl Server {
    fn died(&self) -> Error {
        Error::new(
            ErrorKind::Spawn,
            format!(
                "the fork server (pid {}) died before it started the child",
                self.process.pid
            ),
        )
    }

    /// Keeps the spares announced since the last start, behind those held.
    /// An error leaves the stream out of step: the server is to be retired.
    fn take_announcements(&mut self) -> Result<(), Error> {
        loop {
            let mut fds = [PollFd::new(&self.sock, PollFlags::IN)];
            let ready = crate::sys::poll::poll(&mut fds, Some(Duration::ZERO))
                .map_err(|e| self.died().with_source(e))?;
            if ready == 0 {
                return Ok(());
            }
            self.take_unasked()?;
        }
    }

    /// Reads one frame the server sent unasked (a spare, or word of one
    /// coming or not), and keeps what it says. A reply is out of step.
    fn take_unasked(&mut self) -> Result<(), Error> {
        match self.receive(&mut None)? {
            FromServer::Spare(spare) => self.keep(spare),
            FromServer::Coming(more) => self.expect(more),
            FromServer::Reply(_) => {
                return Err(Error::new(
                    ErrorKind::Decode,
                    "the fork server replied to no request",
                ));
            }
        }
        Ok(())
    }

    /// Counts a spare the server is forking (`more`), or one it could not
    /// fork after all.
    fn expect(&mut self, more: bool) {
        if more {
            self.coming += 1;
        } else {
            self.coming = self.coming.saturating_sub(1);
        }
    }

    /// Waits for the spares the server is forking until one is announced
    /// (or none is coming any more), for at most [`REPLY_WITHIN`]: a start
    /// then waits for the rest of that fork, not for another fork behind
    /// it. The error is as `read_reply`'s outer one.
    fn await_spare(&mut self) -> Result<(), (Error, bool)> {
        let deadline = Instant::now() + REPLY_WITHIN;
        while self.spares.is_empty() && self.coming > 0 {
            self.await_frame(deadline).map_err(|e| (e, true))?;
            self.take_unasked().map_err(|e| (e, false))?;
        }
        Ok(())
    }

    /// Waits until the server has reported the ends of its children that
    /// this process learnt of from their pidfds (`end_unreported`), or
    /// until it announces a spare or says one is coming, for at most
    /// [`REPLY_WITHIN`]: where the server forks a spare when a child ends,
    /// it says so before it reports that end, and a start then waits for
    /// that spare rather than ask for a fork behind it. The error is as
    /// `read_reply`'s outer one.
    fn await_reports(&mut self) -> Result<(), (Error, bool)> {
        let mut ends = take_unreported(self.process.pid);
        let deadline = Instant::now() + REPLY_WITHIN;
        let waited = loop {
            if ends.is_empty() || !self.spares.is_empty() || self.coming > 0 {
                break Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let mut fds: Vec<PollFd<'_>> = std::iter::once(&self.sock)
                .chain(&ends)
                .map(|fd| PollFd::new(fd, PollFlags::IN))
                .collect();
            let ready = match crate::sys::poll::poll(&mut fds, Some(left)) {
                Ok(0) => break Err((self.silent(), true)),
                Ok(_) => fds
                    .iter()
                    .map(|fd| !fd.revents().is_empty())
                    .collect::<Vec<_>>(),
                Err(e) => break Err((self.died().with_source(e), false)),
            };
            // Reported (or the server is gone, which ends the pipe).
            let mut reported = ready[1..].iter();
            ends.retain(|_| reported.next() != Some(&true));
            if ready[0]
                && let Err(e) = self.take_unasked()
            {
                break Err((e, false));
            }
        };
        // Still to come, for the next start.
        for end in ends {
            keep_unreported(self.process.pid, end);
        }
        waited
    }

    /// Keeps an announced spare, behind those announced before it.
    fn keep(&mut self, spare: Spare) {
        self.coming = self.coming.saturating_sub(1);
        if self.spares.len() >= MAX_SPARES {
            // More than the server announces: dropped, they exit.
            self.spares.pop_front();
        }
        self.spares.push_back(spare);
    }

    /// Waits for the reply to a request, keeping any spare announced
    /// before it. `status` is the request's status pipe. The outer error
    /// leaves the stream out of step (with `true` if the server was only
    /// silent too long); the inner one is the server's refusal.
    fn read_reply(&mut self, status: OwnedFd) -> Result<Result<Forked, Error>, (Error, bool)> {
        let mut status = Some(status);
        let deadline = Instant::now() + REPLY_WITHIN;
        loop {
            self.await_frame(deadline).map_err(|e| (e, true))?;
            match self.receive(&mut status).map_err(|e| (e, false))? {
                FromServer::Spare(spare) => self.keep(spare),
                FromServer::Coming(more) => self.expect(more),
                FromServer::Reply(reply) => return Ok(reply),
            }
        }
    }

    /// Waits until a frame can be read, until `deadline`: a server that
    /// has not answered by then (stopped, or wedged) is an error, and is to
    /// be set aside, rather than a start (and every start after it, and a
    /// pool's `terminate`, which waits for its starts) waiting for ever.
    fn await_frame(&self, deadline: Instant) -> Result<(), Error> {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut fds = [PollFd::new(&self.sock, PollFlags::IN)];
        match crate::sys::poll::poll(&mut fds, Some(left)) {
            Ok(0) => Err(self.silent()),
            Ok(_) => Ok(()),
            Err(e) => Err(self.died().with_source(e)),
        }
    }

    /// The server has not answered within [`REPLY_WITHIN`].
    fn silent(&self) -> Error {
        Error::new(
            ErrorKind::Spawn,
            format!(
                "the fork server (pid {}) did not answer within {} s (is it stopped?); \
                 the next start brings up a new one",
                self.process.pid,
                REPLY_WITHIN.as_secs()
            ),
        )
    }

    /// Reads one `Forked` frame. A reply takes `status` (the request's
    /// status pipe); without one, a reply is out of step.
    fn receive(&self, status: &mut Option<OwnedFd>) -> Result<FromServer, Error> {
        let mut buf = Vec::new();
        let frame = match wire::recv_frame(self.sock.as_fd(), &mut buf) {
            Ok(Some(frame)) if frame.kind == FrameKind::Forked => frame,
            Ok(Some(frame)) => {
                return Err(Error::new(
                    ErrorKind::Decode,
                    format!("the fork server sent a {:?} frame", frame.kind),
                ));
            }
            Ok(None) => return Err(self.died()),
            Err(e) => return Err(self.died().with_source(e.into_error())),
        };
        let malformed = |what: &str| {
            Error::new(
                ErrorKind::Decode,
                format!("the fork server's {what} came without its descriptors"),
            )
        };
        match wire::codec::decode::<ForkReply>(&buf) {
            Ok(ForkReply::Started { pid }) => {
                match (<[OwnedFd; 1]>::try_from(frame.fds), status.take()) {
                    (Ok([pidfd]), Some(status)) => Ok(FromServer::Reply(Ok(Forked {
                        pid,
                        server: self.process.pid,
                        pidfd,
                        status,
                    }))),
                    (Ok(_), None) => Err(Error::new(
                        ErrorKind::Decode,
                        "the fork server replied to no request",
                    )),
                    (Err(_), _) => Err(malformed("reply")),
                }
            }
            Ok(ForkReply::Failed { message }) => Ok(FromServer::Reply(Err(Error::new(
                ErrorKind::Spawn,
                format!("the fork server could not fork: {message}"),
            )))),
            Ok(ForkReply::Spare { pid, control: None }) => {
                match <[OwnedFd; 3]>::try_from(frame.fds) {
                    Ok([pidfd, control, status]) => Ok(FromServer::Spare(Spare {
                        parts: Some((
                            Forked {
                                pid,
                                server: self.process.pid,
                                pidfd,
                                status,
                            },
                            control,
                        )),
                        holds_ours: false,
                    })),
                    Err(_) => Err(malformed("spare")),
                }
            }
            Ok(ForkReply::Spare {
                pid,
                control: Some(number),
            }) => match <[OwnedFd; 2]>::try_from(frame.fds) {
                Ok([pidfd, status]) => {
                    // Our end, which the spare holds under that number.
                    let fetched = rustix::process::pidfd_getfd(
                        &pidfd,
                        number,
                        rustix::process::PidfdGetfdFlags::empty(),
                    );
                    let child = Forked {
                        pid,
                        server: self.process.pid,
                        pidfd,
                        status,
                    };
                    match fetched {
                        Ok(control) => Ok(FromServer::Spare(Spare {
                            parts: Some((child, control)),
                            holds_ours: true,
                        })),
                        // Ended already (or refused us after all): passed
                        // over, and killed, as a spare dropped unused; one
                        // less coming.
                        Err(_) => {
                            let _ = rustix::process::pidfd_send_signal(&child.pidfd, Signal::KILL);
                            Ok(FromServer::Coming(false))
                        }
                    }
                }
                Err(_) => Err(malformed("spare")),
            },
            Ok(ForkReply::SpareComing) => Ok(FromServer::Coming(true)),
            Ok(ForkReply::NoSpare) => Ok(FromServer::Coming(false)),
            Err(message) => Err(Error::new(
                ErrorKind::Decode,
                format!("could not decode the fork server's reply: {message}"),
            )),
        }
    }

    /// Hands `request` to `spare` (then `early` on its control socket),
    /// or `None` if the spare has died.
    fn assign(
        &self,
        spare: Spare,
        request: &ForkRequest,
        early: &mut dyn FnMut(BorrowedFd<'_>),
    ) -> Option<(Forked, OwnedFd)> {
        // Its end of its control socket closes when it dies (hang-up, or
        // bytes it never sends before its request).
        let control = spare.control()?;
        let mut fds = [PollFd::new(&control, PollFlags::IN)];
        if !matches!(
            crate::sys::poll::poll(&mut fds, Some(Duration::ZERO)),
            Ok(0)
        ) {
            return None;
        }
        let mut spare = spare;
        let (child, control) = spare.parts.take()?;
        // From here on the spare is the child: if it dies before it reads
        // the request, `join` reports how, as for any child. The call
        // follows the request on the same socket.
        let _ =
            super::protocol::send_message(control.as_fd(), FrameKind::ForkRequest, request, &[]);
        early(control.as_fd());
        Some((child, control))
    }
}

/// The status pipes of children whose end this process learnt from their
/// pidfds before their server reported it, with the server's pid: at most
/// [`MAX_UNREPORTED`], the newest. Not under the server's lock, which a
/// start holds while it waits on them, so that a `join` never waits for a
/// start.
static UNREPORTED: Mutex<VecDeque<(u32, OwnedFd)>> = Mutex::new(VecDeque::new());

/// How many unreported ends are kept (a start waits for the first report
/// that comes with a spare, and any one report will do for that).
const MAX_UNREPORTED: usize = 8;

/// Notes that the end of a child of `server` was learnt from its pidfd
/// before the server reported it on `status`, its status pipe: the next
/// start that finds no spare waits for that report (`await_reports`).
pub(crate) fn end_unreported(server: u32, status: BorrowedFd<'_>) {
    // A copy, which the child's handle does not wait on; without one, the
    // start asks for a fork, as it would have.
    if let Ok(copy) = rustix::io::fcntl_dupfd_cloexec(status, 0) {
        keep_unreported(server, copy);
    }
}

/// Keeps `status`, dropping the ends reported since (whose pipes are
/// readable), so that only ends still to be reported hold a descriptor.
fn keep_unreported(server: u32, status: OwnedFd) {
    let mut ends = UNREPORTED.lock().unwrap_or_else(|p| p.into_inner());
    if !ends.is_empty() {
        let reported: Vec<bool> = {
            let mut fds: Vec<PollFd<'_>> = ends
                .iter()
                .map(|(_, fd)| PollFd::new(fd, PollFlags::IN))
                .collect();
            match crate::sys::poll::poll(&mut fds, Some(Duration::ZERO)) {
                Ok(_) => fds.iter().map(|fd| !fd.revents().is_empty()).collect(),
                Err(_) => vec![false; fds.len()],
            }
        };
        let mut reported = reported.into_iter();
        ends.retain(|_| reported.next() != Some(true));
    }
    if ends.len() >= MAX_UNREPORTED {
        ends.pop_front();
    }
    ends.push_back((server, status));
}

/// Takes the unreported ends of children of `server`, dropping those of
/// any other (an earlier server, gone or set aside).
fn take_unreported(server: u32) -> Vec<OwnedFd> {
    let mut ends = UNREPORTED.lock().unwrap_or_else(|p| p.into_inner());
    ends.drain(..)
        .filter(|(of, _)| *of == server)
        .map(|(_, status)| status)
        .collect()
}

/// Servers a start gave up on for their silence (stopped, or wedged),
/// by their sockets: no longer asked for children, but kept open, so that
/// such a server does not take its children with it (a daemon's
/// parent-death signal follows its server, which exits when its socket
/// ends). It lives on with them, reporting how they end once it runs
/// again, until this process exits and its own parent-death signal ends
/// it.
static SET_ASIDE: Mutex<Vec<OwnedFd>> = Mutex::new(Vec::new());

/// Stops asking the server for children without ending it (see
/// [`SET_ASIDE`]); the next start brings up a new one. The spares it
/// announced are dropped, and exit.
fn set_aside(server: &mut Option<Server>) {
    if let Some(old) = server.take() {
        SET_ASIDE
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(old.sock);
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
///
/// It is told to leave each spare's end of its control socket in the spare,
/// for us to take (`Marker::fetch`), unless this process may not take a
/// descriptor from its children (`pidfd_getfd`, Linux 5.6, which a
/// ptrace policy, a security module or a seccomp filter may refuse): that
/// is tried on the server itself, and if refused, the server is replaced
/// by one that sends each spare's end, and so is every later one.
fn start_server() -> Result<Server, Error> {
    if !FETCH_REFUSED.load(Ordering::Relaxed) {
        let server = launch_server(true)?;
        if may_fetch_from(&server.process) {
            return Ok(server);
        }
        FETCH_REFUSED.store(true, Ordering::Relaxed);
        let _ = server.process.signal(Signal::KILL);
    }
    launch_server(false)
}

/// Whether this process was refused a descriptor of one of its children.
static FETCH_REFUSED: AtomicBool = AtomicBool::new(false);

/// Whether this process may take descriptors from `process`, a child (and
/// so from its children): it takes a copy of its standard error, or is
/// told it has none, which is checked after the permission.
fn may_fetch_from(process: &Child) -> bool {
    // The crate's tests make it refused.
    #[cfg(feature = "test-hooks")]
    if std::env::var_os(super::protocol::NO_FETCH_ENV).is_some() {
        return false;
    }
    let Some(pidfd) = process.pidfd() else {
        return false;
    };
    matches!(
        rustix::process::pidfd_getfd(pidfd, 2, rustix::process::PidfdGetfdFlags::empty()),
        Ok(_) | Err(rustix::io::Errno::BADF)
    )
}

/// Starts a fork server (see `start_server`), which leaves each spare's
/// end of its control socket in the spare if `fetch`.
fn launch_server(fetch: bool) -> Result<Server, Error> {
    let spawn_err = |e: std::io::Error| {
        Error::new(ErrorKind::Spawn, "could not start the fork server").with_source(e)
    };
    let (ours, theirs) = crate::sys::stream_pair().map_err(spawn_err)?;
    // Its children see this program's arguments, as re-executed ones do.
    // It holds no descriptor of ours but its socket: one we had left
    // inheritable would otherwise stay open in it, and in every child it
    // forks, long after we closed it.
    let mut env = EnvChanges::default();
    env.change(
        BOOT_ENV.into(),
        Some(Marker::for_server(super::registry::loaded_count(), fetch).into()),
    );
    let launch = super::parent::Relaunch {
        control: theirs,
        env,
    };
    let pid = super::parent::spawn_on_daemon_thread(launch).map_err(spawn_err)?;
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
        spares: VecDeque::new(),
        coming: 0,
    })
}
