//! Process-shared synchronisation primitives and shared memory.
//!
//! Every primitive is a small memfd mapped `MAP_SHARED` (see
//! [`crate::sys::shm`]) holding futex words; a handle is an `Arc` of that
//! mapping, and travels to another process as the memfd (`SCM_RIGHTS`),
//! which the receiver validates and maps again.
//!
//! Layout shared by all regions: a magic word at offset 0 naming the kind
//! of primitive, the lock word at 8 and its owner tag at 16 (for kinds with
//! a lock), kind-specific words from 24 to 40, then the data of `Value`,
//! `Array` and `SharedMemory`. A `Queue` keeps two locks of its own further
//! on instead (see `sys::ring`), and its ring as the data.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::de::{Error as _, Visitor};
use serde::ser::Error as _;
use serde::{Deserializer, Serializer};

use crate::error::{Error, ErrorKind};
use crate::sys::shm::SharedRegion;

mod array;
mod barrier;
mod condition;
mod event;
mod lock;
mod pod;
mod rlock;
mod semaphore;
mod shared_memory;
mod value;

pub use array::{Array, ArrayGuard};
pub use barrier::Barrier;
pub use condition::{Condition, ConditionGuard};
pub use event::Event;
pub use lock::{Lock, LockGuard};
pub use rlock::{RLock, RLockGuard};
pub use semaphore::{BoundedSemaphore, Semaphore, SemaphoreGuard};
pub use shared_memory::{SharedMemory, SharedMemoryGuard};
pub use value::{Value, ValueGuard};

/// Why `try_lock` or `lock_timeout` returned no guard (std's
/// `TryLockError`, with owner death in place of poisoning).
///
/// It converts into [`Error`], so `lock.try_lock()?` works in a function
/// returning [`Result`](crate::Result).
///
/// ```
/// use multiproc::{Lock, TryLockError};
/// # fn main() -> multiproc::Result<()> {
/// let lock = Lock::new()?;
/// let guard = lock.try_lock()?;
/// assert!(matches!(lock.try_lock(), Err(TryLockError::WouldBlock)));
/// drop(guard);
/// assert!(lock.try_lock().is_ok());
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub enum TryLockError {
    /// The lock is held: now (`try_lock`), or until the deadline
    /// (`lock_timeout`).
    WouldBlock,
    /// The lock could not be taken: its holder died
    /// ([`ErrorKind::OwnerDied`]; the lock is then free, and the next
    /// attempt takes it), or another failure.
    Failed(Error),
}

impl TryLockError {
    /// Whether the lock was held ([`TryLockError::WouldBlock`]).
    pub fn is_would_block(&self) -> bool {
        matches!(self, TryLockError::WouldBlock)
    }

    /// The error, if the attempt failed rather than found the lock held.
    pub fn error(&self) -> Option<&Error> {
        match self {
            TryLockError::WouldBlock => None,
            TryLockError::Failed(e) => Some(e),
        }
    }
}

impl fmt::Display for TryLockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryLockError::WouldBlock => f.write_str("the lock is held by another holder"),
            TryLockError::Failed(e) => write!(f, "the lock could not be taken: {e}"),
        }
    }
}

impl std::error::Error for TryLockError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TryLockError::WouldBlock => None,
            TryLockError::Failed(e) => Some(e),
        }
    }
}

impl From<TryLockError> for Error {
    /// `WouldBlock` becomes an [`ErrorKind::Timeout`] error; `Failed` its
    /// error.
    fn from(e: TryLockError) -> Error {
        match e {
            TryLockError::WouldBlock => {
                Error::new(ErrorKind::Timeout, "the lock is held by another holder")
            }
            TryLockError::Failed(e) => e,
        }
    }
}

/// A guard, or why there is none: what `try_lock` and `lock_timeout`
/// return, from an attempt that gives `Ok(None)` when the lock is held.
pub(crate) fn try_locked<G>(attempt: Result<Option<G>, Error>) -> Result<G, TryLockError> {
    match attempt {
        Ok(Some(guard)) => Ok(guard),
        Ok(None) => Err(TryLockError::WouldBlock),
        Err(e) => Err(TryLockError::Failed(e)),
    }
}

/// The standard words: magic, lock word, owner tag, and kind-specific
/// words up to here. The data of `Value`, `Array` and `SharedMemory` starts
/// right after (aligned), so a small value shares the lock's cache line.
pub(crate) const WORDS_LEN: usize = 40;
/// Size of regions that have nothing past the standard words.
pub(crate) const WORDS_ONLY_LEN: usize = 64;
const MAGIC: usize = 0;

/// The kind of a region, checked when a handle arrives.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RegionKind {
    /// Stored at offset 0.
    magic: u32,
    /// The type's name, for messages, memfd names and serde.
    name: &'static str,
}

impl RegionKind {
    pub(crate) const fn new(tag: &[u8; 4], name: &'static str) -> RegionKind {
        RegionKind {
            magic: u32::from_le_bytes(*tag),
            name,
        }
    }
}

/// Makes a zeroed region of `kind` and lets `init` fill in its words
/// before any other process can see it.
pub(crate) fn create(
    kind: RegionKind,
    atomics_len: usize,
    data_len: usize,
    init: impl FnOnce(&SharedRegion),
) -> Result<Arc<SharedRegion>, Error> {
    let region = SharedRegion::create(kind.name, atomics_len, data_len)
        .map_err(|e| Error::io(format!("creating a {}", kind.name), e))?;
    init(&region);
    region
        .atomic_u32(MAGIC)
        .store(kind.magic, Ordering::Release);
    Ok(Arc::new(region))
}

/// Serializes a handle: its memfd goes in the message's descriptor table.
pub(crate) fn serialize_region<S: Serializer>(
    region: &SharedRegion,
    kind: RegionKind,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let index = crate::wire::push_fd(region.as_fd()).map_err(S::Error::custom)?;
    serializer.serialize_newtype_struct(kind.name, &index)
}

/// Deserializes a handle: takes its memfd, validates and maps it, checks
/// the magic word. `atomics_len: None` means the whole region is atomics.
pub(crate) fn deserialize_region<'de, D: Deserializer<'de>>(
    deserializer: D,
    kind: RegionKind,
    atomics_len: Option<usize>,
) -> Result<SharedRegion, D::Error> {
    struct Index;
    impl<'de> Visitor<'de> for Index {
        type Value = u32;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a multiproc handle")
        }
        fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<u32, D::Error> {
            serde::Deserialize::deserialize(d)
        }
    }
    let index = deserializer.deserialize_newtype_struct(kind.name, Index)?;
    let fd = crate::wire::take_fd(index).map_err(D::Error::custom)?;
    open_region(fd, kind, atomics_len).map_err(|e| D::Error::custom(crate::wire::handle_error(e)))
}

/// Validates and maps a received region of `kind` (see [`SharedRegion::open`]),
/// checking its size and magic word.
pub(crate) fn open_region(
    fd: std::os::fd::OwnedFd,
    kind: RegionKind,
    atomics_len: Option<usize>,
) -> Result<SharedRegion, String> {
    let bad = |why: String| format!("received {} is invalid: {why}", kind.name);
    let region = SharedRegion::open(fd, atomics_len).map_err(|e| bad(e.to_string()))?;
    if region.len() < WORDS_LEN {
        return Err(bad(format!("{} bytes is too small", region.len())));
    }
    let magic = region.atomic_u32(MAGIC).load(Ordering::Acquire);
    if magic != kind.magic {
        return Err(bad(format!(
            "it is not a {} (magic {magic:#010x})",
            kind.name
        )));
    }
    Ok(region)
}

/// The error for a lock whose owner died holding it.
pub(crate) fn owner_died(what: &str, pid: u32) -> Error {
    Error::new(
        ErrorKind::OwnerDied,
        format!(
            "process {pid} died while holding the {what}; the {what} is free again \
             (lock it again to recover, and check the state it protected)"
        ),
    )
}

/// Implements `Clone`, `Serialize` and `Deserialize` for a handle that is
/// just `{ region: Arc<SharedRegion> }` with a fixed atomics part.
macro_rules! region_handle {
    ($ty:ident, $kind:expr, $atomics_len:expr) => {
        impl ::std::clone::Clone for $ty {
            fn clone(&self) -> $ty {
                $ty {
                    region: ::std::sync::Arc::clone(&self.region),
                }
            }
        }

        impl ::serde::Serialize for $ty {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                $crate::sync::serialize_region(&self.region, $kind, s)
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $ty {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                let region = $crate::sync::deserialize_region(d, $kind, $atomics_len)?;
                Ok($ty {
                    region: ::std::sync::Arc::new(region),
                })
            }
        }
    };
}
pub(crate) use region_handle;

#[cfg(test)]
mod tests;
