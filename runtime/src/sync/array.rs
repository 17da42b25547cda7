//! [`Array`]: Python's `multiprocessing.Array`.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

use bytemuck::{CheckedBitPattern, NoUninit, Zeroable};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::RegionKind;
use super::TryLockError;
use super::pod::PodRegion;
use crate::error::{Error, ErrorKind};
use crate::sys::lock_word::Deadline;
use crate::sys::shm::TypedGuard;

const KIND: RegionKind = RegionKind::new(b"mpAR", "multiproc::Array");
const WHAT: &str = "array's lock";

/// A fixed-length array of plain-old-data elements in shared memory, with a
/// built-in lock (Python's `multiprocessing.Array`).
///
/// [`lock`](Self::lock) gives a guard that derefs to `[T]`.
///
/// ```
/// use multiproc::{process_entry, spawn, Array};
///
/// #[process_entry]
/// fn square_all(numbers: Array<i64>) -> bool {
///     let Ok(mut numbers) = numbers.lock() else { return false };
///     numbers.iter_mut().for_each(|n| *n *= *n);
///     true
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let numbers = Array::from_slice(&[1i64, 2, 3])?;
/// assert!(spawn!(square_all, numbers.clone())?.join()?);
/// assert_eq!(*numbers.lock()?, [1, 4, 9]);
/// assert_eq!(Array::<f64>::new(2)?.to_vec()?, [0.0, 0.0]);
/// # Ok(())
/// # }
/// ```
///
/// # Caveats
/// - `T` is any [`Pod`](crate::Pod) type, or `bool` or `char` (any type
///   with bytemuck's `CheckedBitPattern` and `NoUninit`). The guard is a
///   view of the shared memory itself, not a copy; for a type with invalid
///   bit patterns, `lock` checks the elements once (a cost of one pass over
///   the array), and bytes that are not `T`s make it fail with
///   [`Decode`](crate::ErrorKind::Decode), for good: nothing can rewrite
///   them. Only a process writing behind the lock's back, or a holder
///   killed in the middle of copying a multi-byte element (a `char`), can
///   leave such bytes; if holders may be killed mid-write, share `u32`s
///   rather than `char`s.
/// - A holder that dies makes the next `lock` report
///   [`OwnerDied`](crate::ErrorKind::OwnerDied) and leave the lock free;
///   the elements may be half-written (for a [`Pod`](crate::Pod) type, or
///   `bool`, each is still a valid `T`).
pub struct Array<T> {
    pod: PodRegion<T>,
}

impl<T: CheckedBitPattern + NoUninit + Zeroable> Array<T> {
    /// `len` zeroed elements (`0`, `false`, `'\0'`).
    pub fn new(len: usize) -> Result<Array<T>, Error> {
        Ok(Array {
            pod: PodRegion::zeroed(KIND, len)?,
        })
    }
}

impl<T: CheckedBitPattern + NoUninit> Array<T> {
    /// A copy of `items`.
    pub fn from_slice(items: &[T]) -> Result<Array<T>, Error> {
        Ok(Array {
            pod: PodRegion::from_slice(KIND, items, WHAT)?,
        })
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.pod.len()
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.pod.len() == 0
    }

    fn acquire(&self, wait: Deadline) -> Result<Option<ArrayGuard<'_, T>>, Error> {
        let Some(guard) = self.pod.lock(wait, WHAT)? else {
            return Ok(None);
        };
        // Unlocked as the guard given back is dropped.
        match TypedGuard::new(guard) {
            Ok(elements) => Ok(Some(ArrayGuard { elements })),
            Err(_) => Err(Error::new(
                ErrorKind::Decode,
                format!(
                    "the shared array's bytes are not valid `{}` elements",
                    std::any::type_name::<T>()
                ),
            )),
        }
    }

    /// Locks the array; the guard derefs to `[T]`.
    ///
    /// # Errors
    /// [`OwnerDied`](crate::ErrorKind::OwnerDied) if the lock's holder died;
    /// the lock is then free.
    pub fn lock(&self) -> Result<ArrayGuard<'_, T>, Error> {
        loop {
            if let Some(guard) = self.acquire(Deadline::Never)? {
                return Ok(guard);
            }
        }
    }

    /// Locks the array if no live process holds it: [`TryLockError::WouldBlock`]
    /// otherwise.
    pub fn try_lock(&self) -> Result<ArrayGuard<'_, T>, TryLockError> {
        super::try_locked(self.acquire(Deadline::Now))
    }

    /// Locks the array, giving up after `timeout`:
    /// [`TryLockError::WouldBlock`].
    pub fn lock_timeout(&self, timeout: Duration) -> Result<ArrayGuard<'_, T>, TryLockError> {
        super::try_locked(self.acquire(Deadline::after(timeout)))
    }

    /// A copy of the elements, taken under the lock.
    pub fn to_vec(&self) -> Result<Vec<T>, Error> {
        Ok(self.lock()?.to_vec())
    }
}

impl<T> Clone for Array<T> {
    fn clone(&self) -> Array<T> {
        Array {
            pod: self.pod.clone(),
        }
    }
}

impl<T: CheckedBitPattern + NoUninit> Serialize for Array<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.pod.serialize(KIND, s)
    }
}

impl<'de, T: CheckedBitPattern + NoUninit> Deserialize<'de> for Array<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Array<T>, D::Error> {
        Ok(Array {
            pod: PodRegion::deserialize(d, KIND, None)?,
        })
    }
}

impl<T: CheckedBitPattern + NoUninit> fmt::Debug for Array<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Array")
            .field("type", &std::any::type_name::<T>())
            .field("len", &self.len())
            .field("holder_pid", &self.pod.holder())
            .finish()
    }
}

/// The locked elements of an [`Array`]; unlocks on drop.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ArrayGuard<'a, T> {
    elements: TypedGuard<'a, T>,
}

impl<T: CheckedBitPattern + NoUninit> Deref for ArrayGuard<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.elements.elements()
    }
}

impl<T: CheckedBitPattern + NoUninit> DerefMut for ArrayGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        self.elements.elements_mut()
    }
}

impl<T: CheckedBitPattern + NoUninit + fmt::Debug> fmt::Debug for ArrayGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ArrayGuard").field(&&**self).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_that_are_not_bools_fail_to_lock_and_leave_it_free() {
        let bytes = Array::from_slice(&[1u8, 2, 0]).unwrap();
        let flags = Array::<bool> {
            pod: bytes.pod.retyped(),
        };
        assert_eq!(flags.lock().unwrap_err().kind(), ErrorKind::Decode);
        assert_eq!(flags.to_vec().unwrap_err().kind(), ErrorKind::Decode);
        // The failed locks left the lock free.
        bytes.lock().unwrap()[1] = 0;
        assert_eq!(flags.to_vec().unwrap(), [true, false, false]);
        flags.lock().unwrap()[2] = true;
        assert_eq!(bytes.to_vec().unwrap(), [1, 0, 1]);
    }
}
