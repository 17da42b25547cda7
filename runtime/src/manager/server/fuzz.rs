//! The manager server's fuzz entry point
//! (`crate::fuzz_hooks::manager_requests`): a real [`Server`] serving one
//! connection whose bytes are the input, then a well-formed one. Only with
//! `test-hooks`.
//!
//! Blocking requests (a queue's put and get, a lock's or a semaphore's
//! acquire, a condition's, an event's and a barrier's wait) have their
//! timeout forced to 0 before the server sees them, so that none waits: a
//! wait with no other connection to end it would be a hang of the harness,
//! not of the server. `update_with` requests can name a real entry,
//! `manager_fuzz_update`.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;

use super::*;
use crate::manager::proto::MAX_FRAME;

/// A connection whose incoming bytes are given: it reads them `chunk`
/// bytes at a time at most, and keeps (`keep`) or drops what is written
/// to it. Its descriptor (for the server's liveness checks) is one end of
/// a socket pair whose other end stays open: a client that is still there.
struct Scripted<'a> {
    input: &'a [u8],
    chunk: usize,
    keep: bool,
    written: Vec<u8>,
    sock: BorrowedFd<'a>,
}

impl Read for Scripted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.chunk).min(self.input.len());
        let (head, tail) = self.input.split_at(n);
        buf[..n].copy_from_slice(head);
        self.input = tail;
        Ok(n)
    }
}

impl Write for Scripted<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.keep {
            self.written.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for Scripted<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock
    }
}

/// The entry a fuzzed client's `update_with` requests can name (it is
/// registered wherever `test-hooks` is on): a byte string, cut to 64
/// bytes, with one more byte.
#[crate::process_entry]
fn manager_fuzz_update(old: Option<Vec<u8>>) -> Vec<u8> {
    let mut v = old.unwrap_or_default();
    v.truncate(64);
    v.push(1);
    v
}

/// Where a blocking request's timeout (milliseconds) is in its frame.
fn timeout_at(op: u8) -> Option<usize> {
    match Op::from_u8(op)? {
        Op::QueuePut | Op::QueueGet | Op::EventWait | Op::BarrierWait => Some(9),
        Op::Acquire | Op::CondWait => Some(17),
        Op::SemAcquire => Some(25),
        _ => None,
    }
}

/// Forces the timeout of every blocking request in `stream` to 0, reading
/// its frames as the server's `FrameReader` will.
fn no_waiting(stream: &mut [u8]) {
    let mut at = 0;
    while let Some(h) = stream.get(at..at + 4) {
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        if len > MAX_FRAME || stream.len() - at - 4 < len {
            return;
        }
        let frame = &mut stream[at + 4..at + 4 + len];
        if let Some(&op) = frame.first()
            && let Some(t) = timeout_at(op)
            && let Some(ms) = frame.get_mut(t..t + 8)
        {
            ms.fill(0);
        }
        at += 4 + len;
    }
}

/// Builds the stream of a fuzzed connection from `bytes`: records, each a
/// 2-byte little-endian header then that many bytes (cut to what is
/// left), sent as one frame, or as raw bytes (no length prefix of ours)
/// if the header's top bit is set. A last lone byte is sent raw.
fn stream_of(mut bytes: &[u8]) -> Vec<u8> {
    let mut stream = Vec::with_capacity(bytes.len() * 2);
    while let [a, b, rest @ ..] = bytes {
        let header = u16::from_le_bytes([*a, *b]);
        let n = usize::from(header & 0x7fff).min(rest.len());
        let (part, tail) = rest.split_at(n);
        if header & 0x8000 == 0 {
            stream.extend_from_slice(&(n as u32).to_le_bytes());
        }
        stream.extend_from_slice(part);
        bytes = tail;
    }
    stream.extend_from_slice(bytes);
    no_waiting(&mut stream);
    stream
}

/// The request frame `op` on `id` with `fields`.
fn request(out: &mut Vec<u8>, op: Op, id: u64, fields: impl FnOnce(&mut Frame)) {
    let mut f = Frame::new();
    f.u8(op as u8).u64(id);
    fields(&mut f);
    let len = (f.buf.len() - 4) as u32;
    f.buf[..4].copy_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&f.buf);
}

/// Serves `bytes` (see [`stream_of`]; the first byte is how many bytes
/// the server gets per read, 0 for all it asks for) on one connection of
/// a new server whose object ids start at 1, so that an input can name
/// the objects it made. Then checks that the connection's end released
/// everything it held, and that a new connection is served as it should
/// be. A panic here is a bug found.
pub(crate) fn fuzz_requests(bytes: &[u8]) {
    let Some((&chunk, bytes)) = bytes.split_first() else {
        return;
    };
    let Ok((sock, _peer)) = UnixStream::pair() else {
        return;
    };
    let server = Server::new();
    server.lock().next_id = 0;
    let input = stream_of(bytes);
    server.serve_connection(Scripted {
        input: &input,
        chunk: if chunk == 0 {
            usize::MAX
        } else {
            usize::from(chunk)
        },
        keep: false,
        written: Vec::new(),
        sock: sock.as_fd(),
    });
    {
        let st = server.lock();
        assert_eq!(st.connections, 0, "a connection that ended is counted");
        assert!(st.busy.is_empty(), "an object stays busy: {:?}", st.busy);
        for (id, obj) in &st.objects {
            let held = match obj {
                Obj::Lock { holder } => holder.is_some(),
                Obj::RLock(owned) | Obj::Cond { lock: owned, .. } => owned.owner.is_some(),
                Obj::Sem { taken, .. } => !taken.is_empty(),
                _ => false,
            };
            assert!(
                !held,
                "object {id} is still held after its connection ended: {obj:?}"
            );
        }
    }
    // A well-formed client: ping, a new dict, an insert and a get.
    let mut script = Vec::new();
    request(&mut script, Op::Ping, 0, |_| {});
    request(&mut script, Op::Create, 0, |f| {
        f.u8(ObjKind::Map as u8);
    });
    let id = server.lock().next_id.wrapping_add(1).max(1);
    request(&mut script, Op::MapInsert, id, |f| {
        f.bytes(b"key").bytes(b"value");
    });
    request(&mut script, Op::MapGet, id, |f| {
        f.bytes(b"key");
    });
    let mut conn = Scripted {
        input: &script,
        chunk: usize::MAX,
        keep: true,
        written: Vec::new(),
        sock: sock.as_fd(),
    };
    server.serve_connection(&mut conn);
    let mut replies = &conn.written[..];
    let mut reader = FrameReader::default();
    let mut next = || reader.read(&mut replies).map(<[u8]>::to_vec).ok();
    assert_eq!(next().as_deref(), Some(&[OK][..]), "ping");
    let created = next();
    let created = created.as_deref();
    assert_eq!(
        created.and_then(|r| r.first()),
        Some(&OK),
        "create: {created:?}"
    );
    let made = created.and_then(|r| Fields::new(&r[1..]).u64().ok());
    assert_eq!(made, Some(id), "the new dict's id");
    assert_eq!(next().as_deref(), Some(&[OK, 0][..]), "insert");
    let mut got = vec![OK, 1];
    got.extend_from_slice(&5u64.to_le_bytes());
    got.extend_from_slice(b"value");
    assert_eq!(next(), Some(got), "get");
}
