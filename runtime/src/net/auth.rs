//! Mutual authentication of a TCP connection with a shared key: an
//! HMAC-SHA256 challenge–response in both directions, done before either
//! side decodes anything else from the other.
//!
//! The exchange (every message of fixed size, so nothing is allocated from
//! what a peer announces):
//!
//! 1. server → client: `MAGIC`, a random 32-byte challenge `s`;
//! 2. client → server: `MAGIC`, `HMAC(key, "client" ‖ s)`, a random 32-byte
//!    challenge `c`;
//! 3. server → client: one status byte — `REFUSED` (then the server
//!    closes), or `ACCEPTED` followed by `HMAC(key, "server" ‖ c ‖ s)`.
//!
//! Each side compares the proof it receives in constant time
//! (`Mac::verify_slice`). The labels keep one side's proof from being
//! replayed as the other's. Used by the remote [`Manager`](crate::Manager);
//! meant to be shared with the cluster pool.

use std::io::{self, Read, Write};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{Error, ErrorKind};

type HmacSha256 = Hmac<Sha256>;

const MAGIC: [u8; 8] = *b"MPAUTH\x01\x00";
const NONCE: usize = 32;
const PROOF: usize = 32;
const ACCEPTED: u8 = 0xA5;
const REFUSED: u8 = 0x5A;

/// How long either side waits for the other's part of the handshake.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn nonce() -> Result<[u8; NONCE], Error> {
    let mut n = [0u8; NONCE];
    getrandom::fill(&mut n).map_err(|e| {
        Error::new(
            ErrorKind::Io,
            format!("no random bytes for a challenge: {e}"),
        )
    })?;
    Ok(n)
}

/// A fresh random key, for connections between processes that share a
/// secret by other means (a cluster pool hands it to its workers).
pub(crate) fn fresh_key() -> Result<[u8; 32], Error> {
    nonce()
}

fn mac(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    // HMAC accepts keys of any length.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for part in parts {
        mac.update(part);
    }
    mac
}

fn io_err(what: &str, e: io::Error) -> Error {
    let kind = match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ErrorKind::Timeout,
        _ => ErrorKind::Disconnected,
    };
    Error::new(kind, format!("during the authentication handshake: {what}")).with_source(e)
}

/// The server's side: `Ok(())` once the client proved `key` and was sent
/// the server's proof. Any failure leaves the stream unusable (close it).
pub(crate) fn accept<S: Read + Write>(stream: &mut S, key: &[u8]) -> Result<(), Error> {
    let s = nonce()?;
    let mut hello = [0u8; MAGIC.len() + NONCE];
    hello[..MAGIC.len()].copy_from_slice(&MAGIC);
    hello[MAGIC.len()..].copy_from_slice(&s);
    stream
        .write_all(&hello)
        .map_err(|e| io_err("sending the challenge", e))?;
    let mut answer = [0u8; MAGIC.len() + PROOF + NONCE];
    stream
        .read_exact(&mut answer)
        .map_err(|e| io_err("reading the client's answer", e))?;
    let (magic, rest) = answer.split_at(MAGIC.len());
    let (proof, c) = rest.split_at(PROOF);
    let good = magic == MAGIC && mac(key, &[b"client", &s]).verify_slice(proof).is_ok();
    if !good {
        let _ = stream.write_all(&[REFUSED]);
        return Err(Error::new(
            ErrorKind::Auth,
            "the client did not prove the authkey",
        ));
    }
    let mut reply = [0u8; 1 + PROOF];
    reply[0] = ACCEPTED;
    reply[1..].copy_from_slice(&mac(key, &[b"server", c, &s]).finalize().into_bytes());
    stream
        .write_all(&reply)
        .map_err(|e| io_err("sending the server's proof", e))
}

/// The client's side: `Ok(())` once both sides proved `key`. A wrong key on
/// either side is [`ErrorKind::Auth`].
pub(crate) fn connect<S: Read + Write>(stream: &mut S, key: &[u8]) -> Result<(), Error> {
    let mut hello = [0u8; MAGIC.len() + NONCE];
    stream
        .read_exact(&mut hello)
        .map_err(|e| io_err("reading the server's challenge", e))?;
    let (magic, s) = hello.split_at(MAGIC.len());
    if magic != MAGIC {
        return Err(Error::new(
            ErrorKind::Auth,
            "the server does not speak multiproc's authentication handshake",
        ));
    }
    let c = nonce()?;
    let mut answer = [0u8; MAGIC.len() + PROOF + NONCE];
    answer[..MAGIC.len()].copy_from_slice(&MAGIC);
    answer[MAGIC.len()..MAGIC.len() + PROOF]
        .copy_from_slice(&mac(key, &[b"client", s]).finalize().into_bytes());
    answer[MAGIC.len() + PROOF..].copy_from_slice(&c);
    stream
        .write_all(&answer)
        .map_err(|e| io_err("sending the answer", e))?;
    let mut status = [0u8; 1];
    match stream.read_exact(&mut status) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            return Err(Error::new(
                ErrorKind::Auth,
                "the server closed the connection during authentication",
            ));
        }
        Err(e) => return Err(io_err("reading the server's verdict", e)),
    }
    match status[0] {
        ACCEPTED => {}
        REFUSED => {
            return Err(Error::new(
                ErrorKind::Auth,
                "the server refused the authkey (digest mismatch)",
            ));
        }
        _ => {
            return Err(Error::new(
                ErrorKind::Auth,
                "the server sent a malformed verdict",
            ));
        }
    }
    let mut proof = [0u8; PROOF];
    stream
        .read_exact(&mut proof)
        .map_err(|e| io_err("reading the server's proof", e))?;
    mac(key, &[b"server", &c, s])
        .verify_slice(&proof)
        .map_err(|_| Error::new(ErrorKind::Auth, "the server did not prove the authkey"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn handshake(
        server_key: &'static [u8],
        client_key: &[u8],
    ) -> (Result<(), Error>, Result<(), Error>) {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || accept(&mut a, server_key));
        let client = connect(&mut b, client_key);
        (server.join().unwrap(), client)
    }

    #[test]
    fn same_key_both_sides_accept() {
        let (s, c) = handshake(b"secret", b"secret");
        s.unwrap();
        c.unwrap();
    }

    #[test]
    fn wrong_key_is_auth_on_both_sides() {
        let (s, c) = handshake(b"secret", b"guess");
        assert!(s.unwrap_err().is_auth());
        assert!(c.unwrap_err().is_auth());
    }

    #[test]
    fn a_server_without_the_key_cannot_fake_its_proof() {
        // A server that accepts anything but does not know the key.
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let fake = std::thread::spawn(move || {
            let mut hello = [0u8; MAGIC.len() + NONCE];
            hello[..MAGIC.len()].copy_from_slice(&MAGIC);
            a.write_all(&hello).unwrap();
            let mut answer = [0u8; MAGIC.len() + PROOF + NONCE];
            a.read_exact(&mut answer).unwrap();
            let mut reply = [0u8; 1 + PROOF];
            reply[0] = ACCEPTED;
            a.write_all(&reply).unwrap();
        });
        let err = connect(&mut b, b"secret").unwrap_err();
        assert!(err.is_auth(), "{err}");
        fake.join().unwrap();
    }
}
