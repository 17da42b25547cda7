//! The calls behind a Manager's local "dial" socket: a `SOCK_SEQPACKET`
//! socket pair whose messages each carry one descriptor (`SCM_RIGHTS`), and
//! a liveness check of a connected socket.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::event::{PollFd, PollFlags};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

/// A connected `SOCK_SEQPACKET` pair, both ends close-on-exec. Neither end
/// has a name: only holders of a descriptor can use it.
pub(crate) fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Sends `fd` as one message (one byte of payload) on `sock`.
pub(crate) fn send_fd(sock: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> io::Result<()> {
    let fds = [fd];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("no room for a descriptor"));
    }
    loop {
        match rustix::net::sendmsg(
            sock,
            &[IoSlice::new(b"D")],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives one message from `sock` and the descriptors it carried:
/// `Ok(None)` when every other end is closed. A message without exactly
/// one descriptor gives `Ok(Some(vec))` of whatever came (the caller
/// decides); extra descriptors are closed by dropping them.
pub(crate) fn recv_fds(sock: BorrowedFd<'_>) -> io::Result<Option<Vec<OwnedFd>>> {
    let mut byte = [0u8; 8];
    // Room for a few descriptors; a message with more is truncated
    // (`MSG_CTRUNC`) and the kernel closes the rest.
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = loop {
        match rustix::net::recvmsg(
            sock,
            &mut [IoSliceMut::new(&mut byte)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(msg) => break msg,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if msg.bytes == 0 && fds.is_empty() {
        return Ok(None);
    }
    Ok(Some(fds))
}

/// Whether the peer of the connected socket `sock` has hung up (or the
/// socket is in error), without waiting.
pub(crate) fn peer_gone(sock: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(&sock, PollFlags::RDHUP)];
    loop {
        match rustix::event::poll(&mut fds, Some(&rustix::event::Timespec::default())) {
            Ok(0) => return false,
            Ok(_) => {
                return fds[0]
                    .revents()
                    .intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR);
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return true,
        }
    }
}

/// The inode of `fd` (a socket's identity in this machine's network namespace).
pub(crate) fn inode(fd: BorrowedFd<'_>) -> io::Result<u64> {
    Ok(rustix::fs::fstat(fd)?.st_ino)
}

/// Makes a TCP connection notice a peer that vanished without closing it
/// (its machine died, the network went away) within about half a minute:
/// keep-alive probes after 10 s of silence, every 5 s, 3 unanswered ends
/// it. Failures are ignored (the connection then just lacks the probes).
pub(crate) fn tcp_keepalive(sock: BorrowedFd<'_>) {
    use rustix::net::sockopt;
    use std::time::Duration;
    let _ = sockopt::set_socket_keepalive(sock, true);
    let _ = sockopt::set_tcp_keepidle(sock, Duration::from_secs(10));
    let _ = sockopt::set_tcp_keepintvl(sock, Duration::from_secs(5));
    let _ = sockopt::set_tcp_keepcnt(sock, 3);
}
