//! The common part of `Value`, `Array` and `SharedMemory`: `len` elements
//! of a plain-old-data type after the standard header, guarded by the
//! region's lock.

use std::marker::PhantomData;
use std::mem::{align_of, size_of};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytemuck::{NoUninit, Pod};
use serde::de::Error as _;
use serde::{Deserializer, Serializer};

use super::{RegionKind, WORDS_LEN};
use crate::error::{Error, ErrorKind};
use crate::sys::lock_word::{DataGuard, Deadline, RawLock};
use crate::sys::shm::{self, SharedRegion};

/// `size_of::<T>()`, as the creator saw it.
const ELEM_SIZE: usize = 24;
/// `align_of::<T>()`, as the creator saw it.
const ELEM_ALIGN: usize = 28;
/// Number of elements (64 bits, up to `WORDS_LEN`).
const LEN: usize = 32;
/// The mapping is page-aligned; larger alignments cannot be honoured.
const MAX_ALIGN: usize = 4096;

/// Where the elements start: after the standard words, aligned for `T`.
fn data_start<T>() -> usize {
    WORDS_LEN.next_multiple_of(align_of::<T>())
}

/// A region of `len` elements of `T`.
pub(crate) struct PodRegion<T> {
    region: Arc<SharedRegion>,
    len: usize,
    _elements: PhantomData<T>,
}

impl<T> Clone for PodRegion<T> {
    fn clone(&self) -> PodRegion<T> {
        PodRegion {
            region: Arc::clone(&self.region),
            len: self.len,
            _elements: PhantomData,
        }
    }
}

impl<T: NoUninit> PodRegion<T> {
    /// A region of `len` zeroed elements.
    pub(crate) fn zeroed(kind: RegionKind, len: usize) -> Result<PodRegion<T>, Error> {
        if size_of::<T>() == 0 || align_of::<T>() > MAX_ALIGN {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "{} cannot hold a type of size {} and alignment {}",
                    kind.name,
                    size_of::<T>(),
                    align_of::<T>()
                ),
            ));
        }
        let bytes = len.checked_mul(size_of::<T>()).ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("{} of {len} elements is too large", kind.name),
            )
        })?;
        let region = super::create(kind, data_start::<T>(), bytes, |region| {
            region
                .atomic_u32(ELEM_SIZE)
                .store(size_of::<T>() as u32, Relaxed);
            region
                .atomic_u32(ELEM_ALIGN)
                .store(align_of::<T>() as u32, Relaxed);
            region.atomic_u64(LEN).store(len as u64, Relaxed);
        })?;
        Ok(PodRegion {
            region,
            len,
            _elements: PhantomData,
        })
    }

    /// A region holding a copy of `items`.
    pub(crate) fn from_slice(
        kind: RegionKind,
        items: &[T],
        what: &str,
    ) -> Result<PodRegion<T>, Error> {
        let pod = PodRegion::zeroed(kind, items.len())?;
        // Nobody else has it yet, so the lock is free.
        let mut guard = pod.lock(Deadline::Now, what)?.ok_or_else(|| {
            Error::new(
                ErrorKind::Io,
                format!("a new {} was locked by another process", kind.name),
            )
        })?;
        shm::data_mut(&mut guard).copy_from_slice(bytemuck::cast_slice(items));
        drop(guard);
        Ok(pod)
    }

    /// The number of elements.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The same region, seen as holding `U`s (a test's way to put bytes
    /// that are not a `U` behind a handle of `U`).
    #[cfg(test)]
    pub(crate) fn retyped<U>(&self) -> PodRegion<U> {
        PodRegion {
            region: Arc::clone(&self.region),
            len: self.len,
            _elements: PhantomData,
        }
    }

    /// Locks the elements. `Ok(None)`: timed out.
    pub(crate) fn lock(&self, wait: Deadline, what: &str) -> Result<Option<DataGuard<'_>>, Error> {
        DataGuard::lock(&self.region, wait).map_err(|pid| super::owner_died(what, pid))
    }

    /// Debug helper: who holds the lock.
    pub(crate) fn holder(&self) -> Option<u32> {
        RawLock::of(&self.region).holder()
    }

    pub(crate) fn serialize<S: Serializer>(
        &self,
        kind: RegionKind,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        super::serialize_region(&self.region, kind, s)
    }

    /// Receives a region and checks it holds `T`s, `len` of them when given.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
        kind: RegionKind,
        expected_len: Option<usize>,
    ) -> Result<PodRegion<T>, D::Error> {
        let region = super::deserialize_region(d, kind, Some(data_start::<T>()))?;
        let size = region.atomic_u32(ELEM_SIZE).load(Relaxed) as usize;
        let align = region.atomic_u32(ELEM_ALIGN).load(Relaxed) as usize;
        let len = region.atomic_u64(LEN).load(Relaxed);
        let bad = |why: String| {
            D::Error::custom(crate::wire::handle_error(format!(
                "received {} is invalid: {why}",
                kind.name
            )))
        };
        if size != size_of::<T>() || align != align_of::<T>() {
            return Err(bad(format!(
                "it holds elements of size {size} and alignment {align}, expected {} and {}",
                size_of::<T>(),
                align_of::<T>()
            )));
        }
        let len = usize::try_from(len)
            .ok()
            .filter(|&len| len.checked_mul(size) == Some(region.data_len()))
            .ok_or_else(|| {
                bad(format!(
                    "{len} elements do not fill its {} data bytes",
                    region.data_len()
                ))
            })?;
        if let Some(expected) = expected_len
            && len != expected
        {
            return Err(bad(format!("{len} elements, expected {expected}")));
        }
        Ok(PodRegion {
            region: Arc::new(region),
            len,
            _elements: PhantomData,
        })
    }
}

/// Raw access, for types of which every bit pattern is a value.
impl<T: Pod> PodRegion<T> {
    /// Where the elements start, for raw access.
    pub(crate) fn as_ptr(&self) -> *mut T {
        self.region.data_ptr().cast()
    }
}
