//! A message encoded on one thread and written on another: for a sender
//! that must never wait for its receiver where it encodes (the pool's end
//! of a worker's connection, which sends under the pool's lock). It
//! encodes with [`Connection::encode`], so that a message that cannot go
//! fails there; writes what the socket takes at once with
//! [`Connection::try_write_encoded`]; and leaves the rest, if any, to a
//! thread that may wait, with [`Connection::write_encoded`].

use std::any::Any;
use std::fmt;
use std::os::fd::{AsFd, BorrowedFd};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Connection, LANE_MIN, SendLockGuard, SendLocks, lock, send_error};
use crate::error::{Error, ErrorKind};
use crate::sys::lock_word::Deadline;
use crate::wire::{self, FrameKind, OutFrame};

/// A message encoded for one end of a pipe, not yet (all) written. It
/// owns copies of the descriptors of the handles inside it until they are
/// written (they go with its first byte); dropped unwritten, it closes
/// them. Part-way through, it holds the end's send lock, so its writes are
/// never interleaved with another's, and a sender that dies in the middle
/// is seen as it is for [`Connection::send`].
pub(crate) struct Encoded {
    frame: OutFrame,
    kind: FrameKind,
    /// How many bytes of the frame (header included) are written.
    written: usize,
    /// The end's send lock, held while the message is part-way written.
    held: Option<HeldSendLock>,
}

impl fmt::Debug for Encoded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encoded")
            .field("kind", &self.kind)
            .field("len", &self.frame.bytes().len())
            .field("written", &self.written)
            .field("fds", &self.frame.fds().len())
            .finish_non_exhaustive()
    }
}

impl Encoded {
    /// Whether it goes through the sending handle's lane (by
    /// [`Connection::write_encoded`] only).
    fn by_lane(&self) -> bool {
        self.frame.payload().len() >= LANE_MIN
    }

    /// The descriptors still to go: all of them before the first byte is
    /// written, none after.
    fn fds_to_go(&self) -> Vec<BorrowedFd<'_>> {
        if self.written == 0 {
            self.frame.fds().iter().map(AsFd::as_fd).collect()
        } else {
            Vec::new()
        }
    }

    /// `n` more bytes were written; the first carried the descriptors, so
    /// the receiver has its own copies and ours are closed.
    fn advance(&mut self, n: usize) {
        if n > 0 && self.written == 0 {
            self.frame.drop_fds();
        }
        self.written += n;
    }
}

/// An end's send lock, held by an [`Encoded`] part-way written (which may
/// move to another thread: the lock belongs to the process). Released when
/// dropped.
struct HeldSendLock {
    locks: SendLocks,
    side: u8,
}

impl Drop for HeldSendLock {
    fn drop(&mut self) {
        self.locks.of(self.side).release();
    }
}

impl<T> Connection<T> {
    /// Makes the lock `guard` holds one that outlives the borrow of this
    /// end.
    fn hold(&self, guard: SendLockGuard<'_>) -> HeldSendLock {
        // Released by the `HeldSendLock` instead.
        std::mem::forget(guard);
        HeldSendLock {
            locks: self.end.locks.clone(),
            side: self.end.side,
        }
    }

    /// Writes as much of `message` as the socket takes now, never waiting
    /// (neither for the receiver nor for another sender's turn): `true`
    /// once all of it is written. A message for the lane is never started
    /// here (`false`). What is left is for [`write_encoded`](Self::write_encoded);
    /// no other message may go on this end before it.
    pub(crate) fn try_write_encoded(&self, message: &mut Encoded) -> Result<bool, Error> {
        if message.by_lane() {
            return Ok(false);
        }
        if message.held.is_none() {
            let Some(guard) = self.try_lock_sending(Deadline::Now)? else {
                return Ok(false);
            };
            message.held = Some(self.hold(guard));
        }
        let n = wire::send_now(
            self.fd.as_fd(),
            &message.frame.bytes()[message.written..],
            &message.fds_to_go(),
        )
        .map_err(send_error)?;
        message.advance(n);
        if message.written == message.frame.bytes().len() {
            message.held = None;
            return Ok(true);
        }
        if message.written == 0 {
            // Not started: whoever writes it takes the lock again.
            message.held = None;
        }
        Ok(false)
    }

    /// Writes (the rest of) `message`, waiting as [`send`](Connection::send)
    /// waits, and closes its copies of the descriptors, written or not.
    pub(crate) fn write_encoded(&self, mut message: Encoded) -> Result<(), Error> {
        if message.by_lane() {
            let mut send = lock(&self.send_state);
            return self.send_by_lane(
                &mut send.lane,
                message.kind,
                message.frame.payload(),
                message.frame.fds(),
            );
        }
        if message.held.is_none() {
            let guard = self.lock_sending()?;
            message.held = Some(self.hold(guard));
        }
        wire::send_all(
            self.fd.as_fd(),
            &message.frame.bytes()[message.written..],
            &message.fds_to_go(),
        )
        .map_err(send_error)
    }
}

impl<T: Serialize + DeserializeOwned + 'static> Connection<T> {
    /// Encodes `message` as [`send`](Connection::send) would send it, to be
    /// written by [`try_write_encoded`](Self::try_write_encoded) or
    /// [`write_encoded`](Self::write_encoded). Everything that makes a
    /// message unsendable whatever the receiver does (a value that cannot
    /// be encoded, too many handles, the size limit) fails here, as
    /// [`ErrorKind::Encode`]. `reuse`: a message written whole, whose
    /// buffer the encoding goes into (as `send` reuses its own).
    pub(crate) fn encode(&self, message: &T, reuse: Option<Encoded>) -> Result<Encoded, Error> {
        let mut frame = match reuse {
            Some(done) => {
                let mut frame = done.frame;
                frame.clear();
                frame
            }
            None => OutFrame::new(),
        };
        let kind = if let Some(bytes) = (message as &dyn Any).downcast_ref::<Vec<u8>>() {
            frame.push_raw(bytes);
            FrameKind::Bytes
        } else {
            frame.encode(message)?;
            FrameKind::Data
        };
        // Refuses a payload over the frame limit, as `send` does.
        frame
            .seal(kind)
            .map_err(|e| Error::new(ErrorKind::Encode, e.to_string()))?;
        Ok(Encoded {
            frame,
            kind,
            written: 0,
            held: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::Pipe;

    #[test]
    fn messages_written_part_now_and_the_rest_later_arrive_whole_and_in_order() {
        let (a, b) = Pipe::<Vec<u32>>::duplex().unwrap();
        // Below the lane's size: they go through the socket, until it is
        // full and a write stops part-way (or before it starts).
        let message = |i: u32| vec![i; 50_000];
        let mut sent_now = 0;
        let mut queue = Vec::new();
        while queue.is_empty() {
            assert!(sent_now < 1000, "the socket never filled");
            let mut next = a.encode(&message(sent_now), None).unwrap();
            if a.try_write_encoded(&mut next).unwrap() {
                sent_now += 1;
            } else {
                queue.push(next);
            }
        }
        // Behind the one part-way: the writer's, in order.
        let total = sent_now + 3;
        for i in sent_now + 1..total {
            queue.push(a.encode(&message(i), None).unwrap());
        }
        std::thread::scope(|s| {
            s.spawn(|| {
                for message in queue {
                    a.write_encoded(message).unwrap();
                }
            });
            for i in 0..total {
                assert_eq!(b.recv().unwrap(), message(i), "message {i}");
            }
        });
    }

    #[test]
    fn a_lane_message_is_left_to_the_writer() {
        // Raw bytes, as `send` sends a `Vec<u8>`, and over the lane's size.
        let (a, b) = Pipe::<Vec<u8>>::duplex().unwrap();
        let big = vec![7u8; 1 << 20];
        let mut message = a.encode(&big, None).unwrap();
        assert!(!a.try_write_encoded(&mut message).unwrap());
        std::thread::scope(|s| {
            s.spawn(|| a.write_encoded(message).unwrap());
            assert_eq!(b.recv().unwrap(), big);
        });
    }

    #[test]
    fn handles_in_a_message_arrive_once_written() {
        let (a, b) = Pipe::<crate::Fd>::duplex().unwrap();
        let (r, w) = rustix::pipe::pipe().unwrap();
        let mut message = a.encode(&crate::Fd::from(w), None).unwrap();
        assert!(a.try_write_encoded(&mut message).unwrap());
        // The buffer of a message written whole serves the next.
        let (r2, w2) = rustix::pipe::pipe().unwrap();
        let mut message = a.encode(&crate::Fd::from(w2), Some(message)).unwrap();
        assert!(a.try_write_encoded(&mut message).unwrap());
        drop(message);
        for r in [r, r2] {
            let got = b.recv().unwrap();
            rustix::io::write(&got, b"x").unwrap();
            drop(got);
            let mut buf = [0u8; 2];
            // Its one byte, then the end: no copy of the write end is left.
            assert_eq!(rustix::io::read(&r, &mut buf).unwrap(), 1);
            assert_eq!(rustix::io::read(&r, &mut buf).unwrap(), 0);
        }
    }
}
