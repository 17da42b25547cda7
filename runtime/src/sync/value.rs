//! [`Value`]: Python's `multiprocessing.Value`.

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

const KIND: RegionKind = RegionKind::new(b"mpVL", "multiproc::Value");
const WHAT: &str = "value's lock";

/// One plain-old-data value in shared memory, with a built-in lock
/// (Python's `multiprocessing.Value`).
///
/// `T` is any [`Pod`] type: integers, floats, arrays of them, and
/// `#[repr(C)]` structs of them without padding that derive [`Pod`] and
/// [`Zeroable`](crate::Zeroable) (bytemuck's,
/// re-exported, so no dependency of your own is needed; see the second
/// example). [`lock`](Self::lock) gives a guard that derefs to `T`;
/// [`load`](Self::load) and [`store`](Self::store) take the lock for a
/// single read or write.
///
/// ```
/// use multiproc::{process_entry, spawn, Value};
///
/// #[process_entry]
/// fn count(total: Value<u64>, times: u32) -> bool {
///     for _ in 0..times {
///         let Ok(mut n) = total.lock() else { return false };
///         *n += 1;
///     }
///     true
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let total = Value::new(0u64)?;
/// let a = spawn!(count, total.clone(), 1000)?;
/// let b = spawn!(count, total.clone(), 1000)?;
/// assert!(a.join()? && b.join()?);
/// assert_eq!(total.load()?, 2000);
/// # Ok(())
/// # }
/// ```
///
/// A struct of your own: derive `multiproc::Pod` and `multiproc::Zeroable`,
/// and tell the derives where bytemuck is (they name the crate `bytemuck`,
/// which is `multiproc::bytemuck` unless you depend on bytemuck yourself,
/// with its `derive` feature):
///
/// ```
/// use multiproc::{process_entry, spawn, Value};
///
/// #[derive(Clone, Copy, Debug, PartialEq, multiproc::Pod, multiproc::Zeroable)]
/// #[bytemuck(crate = "multiproc::bytemuck")]
/// #[repr(C)]
/// struct Point {
///     x: f64,
///     y: f64,
/// }
///
/// #[process_entry]
/// fn shift(p: Value<Point>) {
///     p.lock().unwrap().x += 1.0;
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let p = Value::new(Point { x: 1.0, y: 2.0 })?;
/// spawn!(shift, p.clone())?.join()?;
/// assert_eq!(p.load()?, Point { x: 2.0, y: 2.0 });
/// # Ok(())
/// # }
/// ```
///
/// # Caveats
/// - `bool` is not `Pod` (not every byte is a valid `bool`): share a `u8`.
/// - If a process dies holding the lock, the next locker gets an
///   [`OwnerDied`](crate::ErrorKind::OwnerDied) error and the lock is left
///   free; the value may be half-written, but is always a valid `T`.
pub struct Value<T> {
    pod: PodRegion<T>,
}

impl<T: Pod> Value<T> {
    /// A new shared value, set to `value`.
    pub fn new(value: T) -> Result<Value<T>, Error> {
        Ok(Value {
            pod: PodRegion::from_slice(KIND, std::slice::from_ref(&value), WHAT)?,
        })
    }

    fn acquire(&self, wait: Deadline) -> Result<Option<ValueGuard<'_, T>>, Error> {
        Ok(self.pod.lock(wait, WHAT)?.map(|guard| ValueGuard {
            guard,
            _value: PhantomData,
        }))
    }

    /// Locks the value; the guard derefs to `T`.
    ///
    /// # Errors
    /// [`OwnerDied`](crate::ErrorKind::OwnerDied) if the lock's holder died;
    /// the lock is then free.
    pub fn lock(&self) -> Result<ValueGuard<'_, T>, Error> {
        loop {
            if let Some(guard) = self.acquire(Deadline::Never)? {
                return Ok(guard);
            }
        }
    }

    /// Locks the value if no live process holds it: `Ok(None)` otherwise.
    pub fn try_lock(&self) -> Result<Option<ValueGuard<'_, T>>, Error> {
        self.acquire(Deadline::Now)
    }

    /// Locks the value, giving up after `timeout`: `Ok(None)`.
    pub fn lock_timeout(&self, timeout: Duration) -> Result<Option<ValueGuard<'_, T>>, Error> {
        self.acquire(Deadline::after(timeout))
    }

    /// Reads the value under its lock.
    pub fn load(&self) -> Result<T, Error> {
        Ok(*self.lock()?)
    }

    /// Writes the value under its lock.
    pub fn store(&self, value: T) -> Result<(), Error> {
        *self.lock()? = value;
        Ok(())
    }
}

impl<T> Clone for Value<T> {
    fn clone(&self) -> Value<T> {
        Value {
            pod: self.pod.clone(),
        }
    }
}

impl<T: Pod> Serialize for Value<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.pod.serialize(KIND, s)
    }
}

impl<'de, T: Pod> Deserialize<'de> for Value<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value<T>, D::Error> {
        Ok(Value {
            pod: PodRegion::deserialize(d, KIND, Some(1))?,
        })
    }
}

impl<T: Pod> fmt::Debug for Value<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Value")
            .field("type", &std::any::type_name::<T>())
            .field("holder_pid", &self.pod.holder())
            .finish()
    }
}

/// The locked value of a [`Value`]; unlocks on drop.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ValueGuard<'a, T> {
    guard: DataGuard<'a>,
    _value: PhantomData<&'a mut T>,
}

impl<T: Pod> Deref for ValueGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &PodRegion::<T>::elements(&self.guard)[0]
    }
}

impl<T: Pod> DerefMut for ValueGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut PodRegion::<T>::elements_mut(&mut self.guard)[0]
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for ValueGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ValueGuard").field(&**self).finish()
    }
}
