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

/// Keepalive probes and a user timeout on a TCP socket, so that a peer
/// that vanished is noticed within about `within`: probes start after a
/// third of it of silence, three go unanswered, and data left
/// unacknowledged for `within` breaks the connection. Best effort.
pub(crate) fn tcp_liveness(sock: BorrowedFd<'_>, within: std::time::Duration) {
    use rustix::net::sockopt;
    use std::time::Duration;
    let secs = within.as_secs().max(3);
    let _ = sockopt::set_socket_keepalive(sock, true);
    let _ = sockopt::set_tcp_keepidle(sock, Duration::from_secs(secs / 3));
    let _ = sockopt::set_tcp_keepintvl(sock, Duration::from_secs((secs / 9).max(1)));
    let _ = sockopt::set_tcp_keepcnt(sock, 3);
    let millis = within.as_millis().min(u128::from(u32::MAX)) as u32;
    let _ = sockopt::set_tcp_user_timeout(sock, millis);
}
