//! [`SharedMemory`]: raw shared bytes (Python's
//! `multiprocessing.shared_memory.SharedMemory`), travelling as a handle.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::RegionKind;
use super::TryLockError;
use super::pod::PodRegion;
use crate::error::Error;
use crate::sys::lock_word::DataGuard;
use crate::sys::lock_word::Deadline;
use crate::sys::shm;

const KIND: RegionKind = RegionKind::new(b"mpSH", "multiproc::SharedMemory");
const WHAT: &str = "shared memory's lock";

/// A block of bytes shared by processes, with a lock (Python's
/// `SharedMemory`, but anonymous: it travels as a handle rather than by
/// name, and is freed when the last handle anywhere is dropped).
///
/// ```
/// use multiproc::{process_entry, spawn, SharedMemory};
///
/// #[process_entry]
/// fn shout(block: SharedMemory) -> bool {
///     let Ok(mut bytes) = block.lock() else { return false };
///     bytes.as_mut_slice().make_ascii_uppercase();
///     true
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let block = SharedMemory::new(5)?;
/// block.lock()?.as_mut_slice().copy_from_slice(b"hello");
/// assert!(spawn!(shout, block.clone())?.join()?);
/// assert_eq!(block.lock()?.as_slice(), b"HELLO");
/// # Ok(())
/// # }
/// ```
///
/// # Caveats
/// - The lock is only advisory for code using [`as_mut_ptr`](Self::as_mut_ptr).
/// - A holder that dies makes the next `lock` report
///   [`OwnerDied`](crate::ErrorKind::OwnerDied) and leave the lock free.
pub struct SharedMemory {
    pod: PodRegion<u8>,
}

impl SharedMemory {
    /// `size` zeroed bytes.
    pub fn new(size: usize) -> Result<SharedMemory, Error> {
        Ok(SharedMemory {
            pod: PodRegion::zeroed(KIND, size)?,
        })
    }

    /// The size in bytes.
    pub fn len(&self) -> usize {
        self.pod.len()
    }

    /// The size in bytes, as Python's `SharedMemory.size`: the same as
    /// [`len`](Self::len).
    pub fn size(&self) -> usize {
        self.len()
    }

    /// Whether the block is empty.
    pub fn is_empty(&self) -> bool {
        self.pod.len() == 0
    }

    fn acquire(&self, wait: Deadline) -> Result<Option<SharedMemoryGuard<'_>>, Error> {
        Ok(self
            .pod
            .lock(wait, WHAT)?
            .map(|guard| SharedMemoryGuard { guard }))
    }

    /// Locks the bytes; the guard derefs to `[u8]`.
    ///
    /// # Errors
    /// [`OwnerDied`](crate::ErrorKind::OwnerDied) if the lock's holder died;
    /// the lock is then free.
    pub fn lock(&self) -> Result<SharedMemoryGuard<'_>, Error> {
        loop {
            if let Some(guard) = self.acquire(Deadline::Never)? {
                return Ok(guard);
            }
        }
    }

    /// Locks the bytes if no live process holds them: [`TryLockError::WouldBlock`]
    /// otherwise.
    pub fn try_lock(&self) -> Result<SharedMemoryGuard<'_>, TryLockError> {
        super::try_locked(self.acquire(Deadline::Now))
    }

    /// Locks the bytes, giving up after `timeout`:
    /// [`TryLockError::WouldBlock`].
    pub fn lock_timeout(&self, timeout: Duration) -> Result<SharedMemoryGuard<'_>, TryLockError> {
        super::try_locked(self.acquire(Deadline::after(timeout)))
    }

    /// The first byte, for raw access outside the lock.
    ///
    /// The pointer is valid for [`len`](Self::len) bytes while this handle
    /// lives. Reading or writing through it is `unsafe`: the caller must
    /// rule out data races with every other thread and process, for
    /// instance by holding the lock or by a protocol of its own.
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.pod.as_ptr()
    }
}

impl Clone for SharedMemory {
    fn clone(&self) -> SharedMemory {
        SharedMemory {
            pod: self.pod.clone(),
        }
    }
}

impl Serialize for SharedMemory {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.pod.serialize(KIND, s)
    }
}

impl<'de> Deserialize<'de> for SharedMemory {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SharedMemory, D::Error> {
        Ok(SharedMemory {
            pod: PodRegion::deserialize(d, KIND, None)?,
        })
    }
}

impl fmt::Debug for SharedMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedMemory")
            .field("len", &self.len())
            .field("holder_pid", &self.pod.holder())
            .finish()
    }
}

/// The locked bytes of a [`SharedMemory`]; unlocks on drop.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct SharedMemoryGuard<'a> {
    guard: DataGuard<'a>,
}

impl SharedMemoryGuard<'_> {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        shm::data(&self.guard)
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        shm::data_mut(&mut self.guard)
    }
}

impl Deref for SharedMemoryGuard<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl DerefMut for SharedMemoryGuard<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

impl fmt::Debug for SharedMemoryGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedMemoryGuard")
            .field("len", &self.as_slice().len())
            .finish()
    }
}
