//! [`Fd`]: a file descriptor that can be passed to another process.

use std::fmt;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An open file descriptor that can travel to another process.
///
/// Put an `Fd` in an entry's arguments (or its result) and the other process
/// receives a working descriptor for the same open file, socket or pipe, as
/// if it had been `dup`ed across (it is sent with `SCM_RIGHTS`). The sender
/// keeps its own descriptor.
///
/// ```
/// use std::io::{Read, Write};
/// use std::os::unix::net::UnixStream;
/// use multiproc::{process_entry, spawn, Fd};
///
/// #[process_entry]
/// fn write_hello(fd: Fd) {
///     let mut stream = UnixStream::from(fd.into_owned_fd());
///     stream.write_all(b"hello from the child").unwrap();
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let (mut mine, theirs) = UnixStream::pair()?;
/// let child = spawn!(write_hello, Fd::from(std::os::fd::OwnedFd::from(theirs)))?;
/// child.join()?;
/// let mut text = String::new();
/// mine.read_to_string(&mut text)?;
/// assert_eq!(text, "hello from the child");
/// # Ok(())
/// # }
/// ```
///
/// # Caveats
/// `Fd` can only be serialized by multiproc itself (in an entry's arguments
/// or result, or a message on a [`Connection`](crate::Connection) or
/// [`Queue`](crate::Queue)); serializing it with another serde serializer
/// is an error rather than a copy of a meaningless number.
pub struct Fd(OwnedFd);

impl Fd {
    /// Wraps an owned descriptor.
    pub fn new(fd: impl Into<OwnedFd>) -> Fd {
        Fd(fd.into())
    }

    /// Duplicates the descriptor (`fcntl(F_DUPFD_CLOEXEC)`).
    pub fn try_clone(&self) -> std::io::Result<Fd> {
        Ok(Fd(self.0.try_clone()?))
    }

    /// The owned descriptor.
    pub fn into_owned_fd(self) -> OwnedFd {
        self.0
    }

    /// The descriptor as a [`File`].
    pub fn into_file(self) -> File {
        File::from(self.0)
    }
}

impl fmt::Debug for Fd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Fd").field(&self.0.as_raw_fd()).finish()
    }
}

impl From<OwnedFd> for Fd {
    fn from(fd: OwnedFd) -> Fd {
        Fd(fd)
    }
}

impl From<File> for Fd {
    fn from(file: File) -> Fd {
        Fd(file.into())
    }
}

impl From<Fd> for OwnedFd {
    fn from(fd: Fd) -> OwnedFd {
        fd.0
    }
}

impl AsFd for Fd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl Serialize for Fd {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let index = crate::wire::push_fd(self.0.as_fd()).map_err(S::Error::custom)?;
        serializer.serialize_newtype_struct("multiproc::Fd", &index)
    }
}

impl<'de> Deserialize<'de> for Fd {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Fd, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename = "multiproc::Fd")]
        struct Index(u32);
        let Index(index) = Index::deserialize(deserializer)?;
        crate::wire::take_fd(index)
            .map(Fd)
            .map_err(D::Error::custom)
    }
}
