//! The side socket: a datagram socket pair owned by the queue, on which an
//! item that carries handles (or whose bytes went to a memfd) sends its
//! descriptors, tagged with the item's sequence number and a message number
//! its record keeps.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use super::*;

/// Sends the side message of item `seq`, tagged with the item's number and
/// `number`, a count of side messages that tells it from one left with the
/// same `seq` by a putter that died before publishing its item.
/// `Ok(false)`: the socket is full.
pub(super) fn send_side(
    sock: BorrowedFd<'_>,
    seq: u32,
    number: u32,
    spill: Option<&OwnedFd>,
    fds: &[OwnedFd],
) -> io::Result<bool> {
    let all: Vec<BorrowedFd<'_>> = spill.into_iter().chain(fds).map(|fd| fd.as_fd()).collect();
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(all.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&all)) {
        return Err(io::Error::other("too many handles in one item"));
    }
    let tag = side_tag(seq, number);
    loop {
        match rustix::net::sendmsg(
            sock,
            &[IoSlice::new(&tag)],
            &mut control,
            SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
        ) {
            Ok(_) => return Ok(true),
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
}

pub(super) const SIDE_TAG: usize = 8;
/// The bits of a side message's number that its record keeps.
pub(super) const NUMBER_MASK: u32 = (1 << (32 - NUMBER_SHIFT)) - 1;

pub(super) fn side_tag(seq: u32, number: u32) -> [u8; SIDE_TAG] {
    let mut tag = [0u8; SIDE_TAG];
    tag[..4].copy_from_slice(&seq.to_le_bytes());
    tag[4..].copy_from_slice(&(number & NUMBER_MASK).to_le_bytes());
    tag
}

/// Receives the side message of item `seq`, numbered `number`. Messages
/// before it (left by putters that died between sending one and publishing
/// its item) are dropped with their descriptors; a later item's message is
/// left for that item (its tag is only peeked at), so one lost message
/// never costs another item its handles.
///
/// A later item is one put since `seq` (up to `tail()`, the count of items
/// ever put, asked after looking): that bounds how far ahead its number can
/// be, so a message left by a dead putter any number of items ago, even
/// past the counts' wrap-around, still counts as before.
pub(super) fn recv_side(
    sock: BorrowedFd<'_>,
    seq: u32,
    number: u32,
    tail: impl Fn() -> u32,
) -> io::Result<Vec<OwnedFd>> {
    let want = side_tag(seq, number);
    let lost = || io::Error::other("the item's handles were lost");
    loop {
        let mut tag = [0u8; SIDE_TAG];
        let peeked = match rustix::net::recvmsg(
            sock,
            &mut [IoSliceMut::new(&mut tag)],
            &mut RecvAncillaryBuffer::new(&mut []),
            RecvFlags::DONTWAIT | RecvFlags::PEEK,
        ) {
            Ok(msg) => msg,
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => return Err(lost()),
            Err(e) => return Err(e.into()),
        };
        let mine = peeked.bytes == SIDE_TAG && tag == want;
        let got = u32::from_le_bytes([tag[0], tag[1], tag[2], tag[3]]);
        let ahead = got.wrapping_sub(seq);
        if !mine && peeked.bytes == SIDE_TAG && ahead != 0 && ahead <= tail().wrapping_sub(seq) {
            return Err(lost());
        }
        // Ours, or older (or garbage): take it, and its descriptors.
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(wire::MAX_FDS + 1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        loop {
            match rustix::net::recvmsg(
                sock,
                &mut [IoSliceMut::new(&mut tag)],
                &mut control,
                RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
            ) {
                Ok(_) => break,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let mut fds = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        if mine {
            return Ok(fds);
        }
    }
}
