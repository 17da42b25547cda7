//! Dialling and accepting authenticated TCP connections.

use std::collections::BTreeMap;
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use super::auth;
use crate::error::{Error, ErrorKind};

/// How long a peer may leave data unacknowledged, or stay silent to
/// keepalive probes, before its connection is reported broken, unless a
/// caller says otherwise.
const LIVENESS: Duration = Duration::from_secs(40);

/// Sets what every connection of ours gets: no Nagle delay, and keepalive
/// probes plus a user timeout so that a peer whose host vanished (no FIN,
/// no RST: power lost, network cut) is noticed within about `liveness`
/// (`None`: the default, 40 s) rather than after the kernel's 15 minutes.
/// A peer that is only busy still answers probes (its kernel does).
pub(crate) fn tune(stream: &TcpStream, liveness: Option<Duration>) {
    let _ = stream.set_nodelay(true);
    crate::sys::dial::tcp_liveness(stream.as_fd(), liveness.unwrap_or(LIVENESS));
}

/// Connects to `addr` (each address it resolves to in turn) and proves
/// `key`; `what` names the peer in errors ("the manager").
pub(crate) fn dial(
    addr: &str,
    key: &[u8],
    what: &str,
    liveness: Option<Duration>,
) -> Result<TcpStream, Error> {
    let addrs = addr
        .to_socket_addrs()
        .map_err(|e| Error::io(format!("resolving the address {addr:?} of {what}"), e))?;
    let mut last = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, auth::HANDSHAKE_TIMEOUT) {
            Ok(mut stream) => {
                tune(&stream, liveness);
                let _ = stream.set_read_timeout(Some(auth::HANDSHAKE_TIMEOUT));
                let _ = stream.set_write_timeout(Some(auth::HANDSHAKE_TIMEOUT));
                auth::connect(&mut stream, key)?;
                let _ = stream.set_read_timeout(None);
                let _ = stream.set_write_timeout(None);
                return Ok(stream);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => Error::new(
            ErrorKind::Disconnected,
            format!("could not connect to {what} at {addr}"),
        )
        .with_source(e),
        None => Error::new(ErrorKind::Io, format!("{addr:?} resolves to no address")),
    })
}

/// Accepts one connection. `Ok(None)` for a failure that concerns only that
/// connection (it was reset before being accepted, a network error of its
/// own, a firewall refused it, a signal interrupted),
/// or a shortage of descriptors (after a short pause, so that connections
/// can end): call again. `Err` when the listener itself is broken.
pub(crate) fn accept(listener: &TcpListener) -> Result<Option<TcpStream>, Error> {
    match listener.accept() {
        Ok((stream, _)) => Ok(Some(stream)),
        Err(e) => match e.kind() {
            std::io::ErrorKind::Interrupted
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::WouldBlock => Ok(None),
            // Linux passes a new connection's pending network error (or a
            // firewall's refusal) up from accept: it concerns that
            // connection only.
            _ if matches!(
                e.raw_os_error(),
                Some(
                    libc::EPROTO
                        | libc::EPERM
                        | libc::ENETDOWN
                        | libc::ENOPROTOOPT
                        | libc::EHOSTDOWN
                        | libc::ENONET
                        | libc::EHOSTUNREACH
                        | libc::EOPNOTSUPP
                        | libc::ENETUNREACH
                )
            ) =>
            {
                Ok(None)
            }
            _ if matches!(
                e.raw_os_error(),
                Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
            ) =>
            {
                // Out of descriptors: a pause, a bound on how often this
                // loops, not a wait for anything.
                std::thread::sleep(Duration::from_millis(50));
                Ok(None)
            }
            _ => Err(Error::io("accepting a connection", e)),
        },
    }
}

/// The server's side of the handshake on a fresh connection, within
/// [`auth::HANDSHAKE_TIMEOUT`]; `liveness` as for [`tune`].
pub(crate) fn handshake_as_server(
    stream: &mut TcpStream,
    key: &[u8],
    liveness: Option<Duration>,
) -> Result<(), Error> {
    tune(stream, liveness);
    let _ = stream.set_read_timeout(Some(auth::HANDSHAKE_TIMEOUT));
    let _ = stream.set_write_timeout(Some(auth::HANDSHAKE_TIMEOUT));
    auth::accept(stream, key)?;
    let _ = stream.set_read_timeout(None);
    let _ = stream.set_write_timeout(None);
    Ok(())
}

/// At most this many connections may be in the authentication handshake
/// at once. Each holds a thread and a second descriptor (to cut it short
/// with) for up to `HANDSHAKE_TIMEOUT`; when one more comes, the oldest is
/// cut short to make room. A client with the key finishes in a few round
/// trips, so it is never the oldest for long: connections that stay silent
/// cannot lock it out, only more than this many new ones arriving while it
/// proves the key.
const MAX_HANDSHAKES: usize = 128;

/// The connections in the handshake on one listener, at most
/// [`MAX_HANDSHAKES`].
#[derive(Debug, Clone, Default)]
pub(crate) struct Handshakes(Arc<InFlight>);

#[derive(Debug, Default)]
struct InFlight {
    slots: Mutex<Slots>,
    /// Notified whenever a handshake ends.
    ended: Condvar,
}

#[derive(Debug, Default)]
struct Slots {
    /// Handshakes begun and not yet ended, cut short or not.
    live: usize,
    /// The number of the last handshake begun: a larger one began later.
    last: u64,
    /// Another descriptor of the socket of each handshake not cut short,
    /// by number, to shut it down with from this side.
    open: BTreeMap<u64, TcpStream>,
}

impl InFlight {
    fn lock(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One connection in the handshake, counted until it is dropped or
/// [finished](Self::finish).
#[derive(Debug)]
pub(crate) struct Handshaking {
    in_flight: Arc<InFlight>,
    number: u64,
}

impl Handshakes {
    /// Counts `stream` in the handshake. If [`MAX_HANDSHAKES`] are in it
    /// already, cuts the oldest short first (shuts its socket down, so that
    /// its thread fails at once) and waits until it has ended. `None` (close
    /// that connection) if there is no descriptor left to cut `stream` short
    /// with, or if none ended within [`auth::HANDSHAKE_TIMEOUT`].
    pub(crate) fn begin(&self, stream: &TcpStream) -> Option<Handshaking> {
        let handle = stream.try_clone().ok()?;
        let in_flight = &self.0;
        let mut slots = in_flight.lock();
        if slots.live >= MAX_HANDSHAKES {
            if let Some((_, oldest)) = slots.open.pop_first() {
                let _ = oldest.shutdown(Shutdown::Both);
            }
            slots = in_flight
                .ended
                .wait_timeout_while(slots, auth::HANDSHAKE_TIMEOUT, |s| s.live >= MAX_HANDSHAKES)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            if slots.live >= MAX_HANDSHAKES {
                return None;
            }
        }
        slots.live += 1;
        slots.last += 1;
        let number = slots.last;
        slots.open.insert(number, handle);
        Some(Handshaking {
            in_flight: Arc::clone(in_flight),
            number,
        })
    }
}

impl Handshaking {
    /// Ends the handshake, which can then no longer be cut short: `true`
    /// if it was not, and so its connection is whole.
    pub(crate) fn finish(self) -> bool {
        self.in_flight.lock().open.remove(&self.number).is_some()
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        let mut slots = self.in_flight.lock();
        slots.open.remove(&self.number);
        slots.live -= 1;
        drop(slots);
        self.in_flight.ended.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    /// One connection more than the bound: the oldest handshake is cut
    /// short (its socket shut down, its `finish` false), and only it.
    #[test]
    fn a_connection_over_the_bound_cuts_the_oldest_handshake_short() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = Handshakes::default();
        let mut clients = Vec::new();
        let mut servers = Vec::new();
        for _ in 0..=MAX_HANDSHAKES {
            clients.push(TcpStream::connect(addr).unwrap());
            let (mut stream, _) = listener.accept().unwrap();
            // The last `begin` returns once the oldest has ended.
            let pending = handshakes.begin(&stream).unwrap();
            // As a handshake does: read until the peer speaks or the
            // socket is shut down.
            servers.push(std::thread::spawn(move || {
                let mut byte = [0u8; 1];
                let read = stream.read(&mut byte).ok();
                (read, pending.finish())
            }));
        }
        let mut servers = servers.into_iter();
        let oldest = servers.next().unwrap().join().unwrap();
        assert_eq!(oldest, (Some(0), false));
        let mut byte = [0u8; 1];
        assert_eq!(clients[0].read(&mut byte).unwrap(), 0);
        for client in &mut clients[1..] {
            client.write_all(&[1]).unwrap();
        }
        for server in servers {
            assert_eq!(server.join().unwrap(), (Some(1), true));
        }
    }
}
