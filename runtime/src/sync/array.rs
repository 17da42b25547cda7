//! [`Array`]: Python's `multiprocessing.Array`.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

use bytemuck::Pod;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::RegionKind;
use super::pod::PodRegion;
use crate::error::Error;
use crate::sys::lock_word::DataGuard;
use crate::sys::lock_word::Deadline;

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
/// - `T: bytemuck::Pod`: every byte pattern must be a `T`, because the
///   guard is a view of the shared memory itself, not a copy. So unlike a
///   [`Value`](crate::Value), an `Array` cannot hold `bool` or `char`:
///   share `u8` or `u32` elements.
/// - A holder that dies makes the next `lock` report
///   [`OwnerDied`](crate::ErrorKind::OwnerDied) and leave the lock free;
///   the elements may be half-written, but are always valid `T`s.
pub struct Array<T> {
    pod: PodRegion<T>,
}

impl<T: Pod> Array<T> {
    /// `len` zeroed elements.
    pub fn new(len: usize) -> Result<Array<T>, Error> {
        Ok(Array {
            pod: PodRegion::zeroed(KIND, len)?,
        })
    }

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
        Ok(self.pod.lock(wait, WHAT)?.map(|guard| ArrayGuard {
            guard,
            _elements: PhantomData,
        }))
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

    /// Locks the array if no live process holds it: `Ok(None)` otherwise.
    pub fn try_lock(&self) -> Result<Option<ArrayGuard<'_, T>>, Error> {
        self.acquire(Deadline::Now)
    }

    /// Locks the array, giving up after `timeout`: `Ok(None)`.
    pub fn lock_timeout(&self, timeout: Duration) -> Result<Option<ArrayGuard<'_, T>>, Error> {
        self.acquire(Deadline::after(timeout))
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

impl<T: Pod> Serialize for Array<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.pod.serialize(KIND, s)
    }
}

impl<'de, T: Pod> Deserialize<'de> for Array<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Array<T>, D::Error> {
        Ok(Array {
            pod: PodRegion::deserialize(d, KIND, None)?,
        })
    }
}

impl<T: Pod> fmt::Debug for Array<T> {
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
    guard: DataGuard<'a>,
    _elements: PhantomData<&'a mut [T]>,
}

impl<T: Pod> Deref for ArrayGuard<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        PodRegion::<T>::elements(&self.guard)
    }
}

impl<T: Pod> DerefMut for ArrayGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        PodRegion::<T>::elements_mut(&mut self.guard)
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for ArrayGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ArrayGuard").field(&&**self).finish()
    }
}
