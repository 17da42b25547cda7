//! [`Value`]: Python's `multiprocessing.Value`.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

use bytemuck::{CheckedBitPattern, NoUninit};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::RegionKind;
use super::TryLockError;
use super::pod::PodRegion;
use crate::error::{Error, ErrorKind};
use crate::sys::lock_word::DataGuard;
use crate::sys::lock_word::Deadline;
use crate::sys::shm;

const KIND: RegionKind = RegionKind::new(b"mpVL", "multiproc::Value");
const WHAT: &str = "value's lock";

/// One plain-old-data value in shared memory, with a built-in lock
/// (Python's `multiprocessing.Value`).
///
/// `T` is any [`Pod`](crate::Pod) type: integers, floats, arrays of them,
/// and `#[repr(C)]` structs of them without padding that derive
/// [`Pod`](crate::Pod) and [`Zeroable`](crate::Zeroable) (bytemuck's,
/// re-exported, so no dependency of your own is needed; see the second
/// example). `bool` and `char` work too, as does any type with bytemuck's
/// [`CheckedBitPattern`] and [`NoUninit`]: the value's bytes are checked
/// each time it is read. [`lock`](Self::lock) gives a guard that derefs to
/// `T`; [`load`](Self::load) and [`store`](Self::store) take the lock for a
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
/// assert_eq!(total.load(), 2000);
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
/// assert_eq!(p.load(), Point { x: 2.0, y: 2.0 });
/// # Ok(())
/// # }
/// ```
///
/// A flag, as Python's `Value(c_bool, False)`:
///
/// ```
/// use multiproc::{process_entry, spawn, Value};
///
/// #[process_entry]
/// fn finish(done: Value<bool>) {
///     done.store(true);
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let done = Value::new(false)?;
/// spawn!(finish, done.clone())?.join()?;
/// assert!(done.load());
/// # Ok(())
/// # }
/// ```
///
/// # Caveats
/// - The guard works on a copy of the value, read when the lock is taken
///   and written back when the guard is dropped (if it was changed). So
///   keep `T` small: for many elements use an [`Array`](crate::Array).
/// - If a process dies holding the lock, the next [`lock`](Self::lock)
///   gets an [`OwnerDied`](crate::ErrorKind::OwnerDied) error and the lock
///   is left free ([`load`](Self::load) and [`store`](Self::store) just
///   take it); the value is as the dead process last wrote it back, and may
///   be half-written if it died while writing.
/// - Bytes that are not a `T` (a `bool` other than 0 or 1, which only a
///   process writing to the memory behind the lock's back could leave)
///   make [`lock`](Self::lock) fail with [`Decode`](crate::ErrorKind::Decode)
///   and [`load`](Self::load) panic; [`store`](Self::store) still
///   overwrites them.
pub struct Value<T> {
    pod: PodRegion<T>,
}

impl<T: CheckedBitPattern + NoUninit> Value<T> {
    /// A new shared value, set to `value`.
    pub fn new(value: T) -> Result<Value<T>, Error> {
        Ok(Value {
            pod: PodRegion::from_slice(KIND, std::slice::from_ref(&value), WHAT)?,
        })
    }

    fn acquire(&self, wait: Deadline) -> Result<Option<ValueGuard<'_, T>>, Error> {
        let Some(guard) = self.pod.lock(wait, WHAT)? else {
            return Ok(None);
        };
        // Unlocked by the guard's drop if the bytes are not a `T`.
        let value =
            bytemuck::checked::try_pod_read_unaligned::<T>(shm::data(&guard)).map_err(|_| {
                Error::new(
                    ErrorKind::Decode,
                    format!(
                        "the shared value's bytes are not a valid `{}`",
                        std::any::type_name::<T>()
                    ),
                )
            })?;
        Ok(Some(ValueGuard {
            guard,
            value,
            changed: false,
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

    /// Locks the value if no live process holds it: [`TryLockError::WouldBlock`]
    /// otherwise.
    pub fn try_lock(&self) -> Result<ValueGuard<'_, T>, TryLockError> {
        super::try_locked(self.acquire(Deadline::Now))
    }

    /// Locks the value, giving up after `timeout`:
    /// [`TryLockError::WouldBlock`].
    pub fn lock_timeout(&self, timeout: Duration) -> Result<ValueGuard<'_, T>, TryLockError> {
        super::try_locked(self.acquire(Deadline::after(timeout)))
    }

    /// Reads the value under its lock (Python's `v.value`).
    ///
    /// A lock whose holder died is taken all the same: the value is as that
    /// process last wrote it back. [`lock`](Self::lock) reports the death.
    ///
    /// # Panics
    /// If the shared bytes are not a `T` (a `bool` other than 0 or 1), which
    /// only a write behind the lock's back can leave (see the caveats);
    /// [`lock`](Self::lock) reports that as an error instead.
    pub fn load(&self) -> T {
        let guard = self.lock_even_if_orphaned();
        match bytemuck::checked::try_pod_read_unaligned::<T>(shm::data(&guard)) {
            Ok(value) => value,
            Err(_) => panic!(
                "the shared value's bytes are not a valid `{}`",
                std::any::type_name::<T>()
            ),
        }
    }

    /// Writes the value under its lock, without reading it first (Python's
    /// `v.value = x`). A lock whose holder died is taken all the same.
    pub fn store(&self, value: T) {
        let mut guard = self.lock_even_if_orphaned();
        shm::data_mut(&mut guard).copy_from_slice(bytemuck::bytes_of(&value));
    }

    /// Takes the lock; one its holder left by dying is taken too (the
    /// death is detected once, which leaves the lock free).
    fn lock_even_if_orphaned(&self) -> DataGuard<'_> {
        loop {
            // The only error is the holder's death: the lock is now free.
            if let Ok(Some(guard)) = self.pod.lock(Deadline::Never, WHAT) {
                return guard;
            }
        }
    }
}

impl<T> Clone for Value<T> {
    fn clone(&self) -> Value<T> {
        Value {
            pod: self.pod.clone(),
        }
    }
}

impl<T: CheckedBitPattern + NoUninit> Serialize for Value<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.pod.serialize(KIND, s)
    }
}

impl<'de, T: CheckedBitPattern + NoUninit> Deserialize<'de> for Value<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value<T>, D::Error> {
        Ok(Value {
            pod: PodRegion::deserialize(d, KIND, Some(1))?,
        })
    }
}

impl<T: CheckedBitPattern + NoUninit> fmt::Debug for Value<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Value")
            .field("type", &std::any::type_name::<T>())
            .field("holder_pid", &self.pod.holder())
            .finish()
    }
}

/// The locked value of a [`Value`]: a copy of it, written back (if
/// changed) and unlocked on drop.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ValueGuard<'a, T: NoUninit> {
    guard: DataGuard<'a>,
    value: T,
    changed: bool,
}

impl<T: NoUninit> Deref for ValueGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: NoUninit> DerefMut for ValueGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.changed = true;
        &mut self.value
    }
}

impl<T: NoUninit> Drop for ValueGuard<'_, T> {
    fn drop(&mut self) {
        if self.changed {
            shm::data_mut(&mut self.guard).copy_from_slice(bytemuck::bytes_of(&self.value));
        }
    }
}

impl<T: NoUninit + fmt::Debug> fmt::Debug for ValueGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ValueGuard").field(&self.value).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_that_are_not_a_bool_fail_to_read_and_can_be_overwritten() {
        let byte = Value::new(2u8).unwrap();
        let flag = Value::<bool> {
            pod: byte.pod.retyped(),
        };
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| flag.load()));
        assert!(panicked.is_err(), "load read a bool from the byte 2");
        assert_eq!(flag.lock().unwrap_err().kind(), ErrorKind::Decode);
        // The failed reads left the lock free, and a store needs no read.
        flag.store(true);
        assert!(flag.load());
        assert_eq!(byte.load(), 1);
    }

    #[test]
    fn a_guard_writes_back_only_what_it_changed() {
        let value = Value::new(5u32).unwrap();
        let twin = Value::<u32> {
            pod: value.pod.retyped(),
        };
        {
            let guard = value.lock().unwrap();
            assert_eq!(*guard, 5);
        }
        {
            let mut guard = value.lock().unwrap();
            *guard += 1;
        }
        assert_eq!(twin.load(), 6);
    }
}
