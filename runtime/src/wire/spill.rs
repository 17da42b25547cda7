//! Payloads moved through a memfd instead of the socket.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use super::frame::MAX_FRAME_LEN;

/// Writes `payload` into a new memfd.
pub(crate) fn spill(payload: &[u8]) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create("multiproc-message", rustix::fs::MemfdFlags::CLOEXEC)?;
    let mut written = 0;
    while written < payload.len() {
        match rustix::io::write(&fd, &payload[written..]) {
            Ok(n) => written += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(fd)
}

/// Reads back what [`spill`] wrote: exactly `len` bytes, checked against
/// the memfd's size before anything is allocated.
pub(crate) fn read_spill(fd: &OwnedFd, len: u64) -> io::Result<Vec<u8>> {
    let size = rustix::fs::fstat(fd)?.st_size;
    if u64::try_from(size).ok() != Some(len) || len > MAX_FRAME_LEN {
        return Err(io::Error::other(format!(
            "spilled message of {len} bytes in a memfd of {size}"
        )));
    }
    let len = len as usize;
    let mut bytes = Vec::with_capacity(len);
    while bytes.len() < len {
        let done = bytes.len();
        let n = crate::sys::pread_append(fd.as_fd(), &mut bytes, len - done, done as u64)?;
        if n == 0 {
            return Err(io::Error::other("spilled message is short"));
        }
    }
    Ok(bytes)
}
