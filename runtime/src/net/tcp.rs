//! Dialling and accepting authenticated TCP connections.

use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
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
/// connection (it was reset before being accepted, a signal interrupted),
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
/// at once; more are closed at once. Each holds a thread for up to
/// `HANDSHAKE_TIMEOUT`, so a flood of connections that never finish the
/// handshake costs a bounded number of threads.
const MAX_HANDSHAKES: usize = 128;

/// Counts the connections in the handshake, to bound them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Handshakes(Arc<AtomicUsize>);

/// One connection in the handshake, counted while it lives.
#[derive(Debug)]
pub(crate) struct Handshaking(Arc<AtomicUsize>);

impl Handshakes {
    /// Counts one more, or `None` if there are already too many (close
    /// that connection).
    pub(crate) fn begin(&self) -> Option<Handshaking> {
        if self.0.fetch_add(1, Ordering::AcqRel) >= MAX_HANDSHAKES {
            self.0.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Handshaking(Arc::clone(&self.0)))
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
