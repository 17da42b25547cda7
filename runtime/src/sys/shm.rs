//! Process-shared memory: a sealed memfd, mapped `MAP_SHARED`.
//!
//! A [`SharedRegion`] is split in two at `data_start`. Below it live the
//! words of the synchronisation protocol, only ever touched as atomics (in
//! every process). At and above it live plain bytes (a `Value`'s `T`, an
//! `Array`'s elements), reachable only through a [`DataGuard`], that is,
//! while holding the region's lock; or, for a queue's ring, only through
//! the copies of [`super::ring`], each confined to the part of the ring
//! that its side's lock gives it (no `DataGuard` is ever made for a queue).

use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};

use rustix::fs::{FileType, MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};

use super::lock_word::DataGuard;

/// The seals every region carries: its size is fixed for good, so a mapped
/// byte can never lose its backing (which would be a `SIGBUS`).
const SIZE_SEALS: SealFlags = SealFlags::SHRINK.union(SealFlags::GROW);

/// A memfd mapped read-write and shared, unmapped on drop.
pub(crate) struct SharedRegion {
    fd: OwnedFd,
    base: NonNull<u8>,
    len: usize,
    data_start: usize,
    id: (u64, u64),
}

// SAFETY: the region owns its mapping; what it hands out is either atomics
// (which are `Sync`), byte slices tied to a `DataGuard`, which excludes
// every other user, thread or process, or (`sys::ring`) copies made under a
// ring side's lock within the bytes that side owns. Moving or sharing the
// owner between threads changes none of that.
unsafe impl Send for SharedRegion {}
// SAFETY: as for `Send` above.
unsafe impl Sync for SharedRegion {}

impl SharedRegion {
    /// Creates a zero-filled region of `atomics_len + data_len` bytes:
    /// `memfd_create(MFD_CLOEXEC | MFD_ALLOW_SEALING)`, `ftruncate`, seals
    /// against any resize (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`), `mmap`.
    pub(crate) fn create(
        name: &str,
        atomics_len: usize,
        data_len: usize,
    ) -> io::Result<SharedRegion> {
        let len = atomics_len
            .checked_add(data_len)
            .filter(|&len| len > 0 && len <= isize::MAX as usize)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("cannot make a shared region of {atomics_len} + {data_len} bytes"),
                )
            })?;
        let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
        // Kernels before 6.3 do not know MFD_NOEXEC_SEAL; newer ones warn without it.
        let fd = match rustix::fs::memfd_create(name, flags | MemfdFlags::NOEXEC_SEAL) {
            Err(rustix::io::Errno::INVAL) => rustix::fs::memfd_create(name, flags)?,
            other => other?,
        };
        rustix::fs::ftruncate(&fd, len as u64)?;
        rustix::fs::fcntl_add_seals(&fd, SIZE_SEALS | SealFlags::SEAL)?;
        let stat = rustix::fs::fstat(&fd)?;
        SharedRegion::map(fd, &stat, len, atomics_len)
    }

    /// Maps a region received from another process, after checking that it
    /// is one: a regular file sealed against resizing (a memfd made by
    /// [`create`](Self::create)), of at least `atomics_len` bytes
    /// (`fstat`). `None` means the whole region is atomics.
    pub(crate) fn open(fd: OwnedFd, atomics_len: Option<usize>) -> io::Result<SharedRegion> {
        let kind = rustix::fs::fstat(&fd)?;
        if FileType::from_raw_mode(kind.st_mode) != FileType::RegularFile {
            return Err(invalid("the descriptor is not a shared-memory object"));
        }
        let seals = rustix::fs::fcntl_get_seals(&fd)
            .map_err(|_| invalid("the descriptor is not a multiproc memfd"))?;
        if !seals.contains(SIZE_SEALS) {
            return Err(invalid(
                "the shared-memory object is not sealed against resizing",
            ));
        }
        // Sealed now, so from here on the size cannot change.
        let stat = rustix::fs::fstat(&fd)?;
        let len = usize::try_from(stat.st_size)
            .ok()
            .filter(|&len| len > 0 && len <= isize::MAX as usize)
            .ok_or_else(|| invalid(format!("bad shared-memory size {}", stat.st_size)))?;
        let atomics_len = atomics_len.unwrap_or(len);
        if len < atomics_len {
            return Err(invalid(format!(
                "shared-memory object of {len} bytes is too small (at least {atomics_len} needed)"
            )));
        }
        SharedRegion::map(fd, &stat, len, atomics_len)
    }

    fn map(
        fd: OwnedFd,
        stat: &rustix::fs::Stat,
        len: usize,
        data_start: usize,
    ) -> io::Result<SharedRegion> {
        // SAFETY: a new mapping at an address the kernel picks (null hint),
        // so it overlaps nothing of ours; `len` bytes of a file sealed
        // against shrinking, so every page stays backed while mapped. No
        // Rust reference into it exists yet.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )?
        };
        let base = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null mapping"))?;
        Ok(SharedRegion {
            fd,
            base,
            len,
            data_start,
            id: stat_id(stat),
        })
    }

    /// The object mapped: its device and inode.
    pub(crate) fn id(&self) -> (u64, u64) {
        self.id
    }

    /// The memfd, for sending to another process.
    pub(crate) fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Total size of the region in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Number of plain data bytes (from `data_start` to the end).
    pub(crate) fn data_len(&self) -> usize {
        self.len - self.data_start
    }

    /// The start of the data bytes, for users who take raw access into their
    /// own hands (`SharedMemory::as_ptr`).
    pub(crate) fn data_ptr(&self) -> *mut u8 {
        self.base.as_ptr().wrapping_add(self.data_start)
    }

    /// Whether both regions map the same object (same inode).
    pub(crate) fn same_object(&self, other: &SharedRegion) -> bool {
        self.id == other.id
    }

    /// The 32-bit word at `offset` of the atomics part.
    ///
    /// # Panics
    /// If `offset` is misaligned or not below `data_start` (a bug in the
    /// caller's layout constants, never something another process controls).
    pub(crate) fn atomic_u32(&self, offset: usize) -> &AtomicU32 {
        self.check_atomic(offset, 4);
        // SAFETY: in bounds of the atomics part and 4-aligned (the mapping
        // is page-aligned), per `check_atomic`. Every process touches the
        // atomics part only through atomics of the size fixed by the
        // layout, and the mapping lives as long as `self`, which the
        // returned reference borrows.
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(offset).cast()) }
    }

    /// The 64-bit word at `offset` of the atomics part.
    ///
    /// # Panics
    /// As [`atomic_u32`](Self::atomic_u32).
    pub(crate) fn atomic_u64(&self, offset: usize) -> &AtomicU64 {
        self.check_atomic(offset, 8);
        // SAFETY: as in `atomic_u32`, with 8-byte size and alignment.
        unsafe { AtomicU64::from_ptr(self.base.as_ptr().add(offset).cast()) }
    }

    fn check_atomic(&self, offset: usize, size: usize) {
        assert!(
            offset.is_multiple_of(size)
                && offset
                    .checked_add(size)
                    .is_some_and(|end| end <= self.data_start),
            "multiproc bug: atomic at offset {offset} outside the {}-byte atomics part",
            self.data_start
        );
    }
}

/// The data bytes of the region `guard` has locked.
pub(crate) fn data<'g>(guard: &'g DataGuard<'_>) -> &'g [u8] {
    let region = guard.region();
    // SAFETY: `data_start..len` is inside the mapping, which outlives the
    // guard's borrow of the region. A `DataGuard` exists only while its
    // holder owns the region's lock (lock_word.rs makes one only after
    // acquiring it and releases it in `Drop`), and every process reaches
    // these bytes only through a guard, so nothing writes them while this
    // shared borrow of the guard lives.
    unsafe {
        std::slice::from_raw_parts(
            region.base.as_ptr().add(region.data_start),
            region.len - region.data_start,
        )
    }
}

/// The data bytes of the region `guard` has locked, writable.
pub(crate) fn data_mut<'g>(guard: &'g mut DataGuard<'_>) -> &'g mut [u8] {
    let region = guard.region();
    // SAFETY: as in `data`; the exclusive borrow of the guard makes this the
    // only reference to the bytes in this process, and the lock excludes
    // every other process.
    unsafe {
        std::slice::from_raw_parts_mut(
            region.base.as_ptr().add(region.data_start),
            region.len - region.data_start,
        )
    }
}

/// A [`DataGuard`] whose bytes were checked to be `T`s when it was made,
/// so that it can hand them out as `[T]` without checking them again on
/// each access (which would make `guard[i]` cost the whole array).
///
/// For a `T` with invalid bit patterns (`bool`, `char`). The check holds
/// for the guard's life: the bytes change only through
/// [`elements_mut`](Self::elements_mut), which writes `T`s, since every
/// process reaches them only through a guard (see [`data`]).
pub(crate) struct TypedGuard<'a, T> {
    guard: DataGuard<'a>,
    len: usize,
    _elements: std::marker::PhantomData<&'a mut [T]>,
}

impl<'a, T: bytemuck::CheckedBitPattern + bytemuck::NoUninit> TypedGuard<'a, T> {
    /// Checks that the guard's bytes are `T`s, suitably aligned; gives the
    /// guard back if not.
    pub(crate) fn new(guard: DataGuard<'a>) -> Result<TypedGuard<'a, T>, DataGuard<'a>> {
        // bytemuck requires `T` to have the layout of `T::Bits`; checked
        // here too, since the views below rely on it.
        if size_of::<T>() != size_of::<T::Bits>() || align_of::<T>() > align_of::<T::Bits>() {
            return Err(guard);
        }
        // Size and alignment; every pattern of `T::Bits` is one.
        let Ok(bits) = bytemuck::try_cast_slice::<u8, T::Bits>(data(&guard)) else {
            return Err(guard);
        };
        // A type of which every pattern is a value (its `Bits` is itself)
        // needs no look at each element, which would cost a pass over the
        // whole array for each lock in a build without optimisations.
        let valid = std::any::TypeId::of::<T>() == std::any::TypeId::of::<T::Bits>()
            || bits.iter().all(T::is_valid_bit_pattern);
        if !valid {
            return Err(guard);
        }
        let len = bits.len();
        Ok(TypedGuard {
            guard,
            len,
            _elements: std::marker::PhantomData,
        })
    }

    /// The elements.
    pub(crate) fn elements(&self) -> &[T] {
        let bytes = data(&self.guard);
        // SAFETY: `new` found these bytes to be `len` aligned `T::Bits`,
        // which bytemuck guarantees have `T`'s size and alignment, each a
        // valid `T` (a `T` whose `Bits` is itself is every bit pattern). Since then they were written only
        // through `elements_mut`, that is, as `T`s: no other process writes
        // them while this guard holds the region's lock (see `data`). The
        // borrow of `self` keeps them from changing while the slice lives.
        unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), self.len) }
    }

    /// The elements, writable.
    pub(crate) fn elements_mut(&mut self) -> &mut [T] {
        let len = self.len;
        let bytes = data_mut(&mut self.guard);
        // SAFETY: as in `elements`; the exclusive borrow of `self` makes
        // this the only reference to the bytes, and whatever safe code
        // writes through it is a valid `T`.
        unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<T>(), len) }
    }
}

impl Drop for SharedRegion {
    fn drop(&mut self) {
        // SAFETY: `base..base + len` is exactly the mapping made in `map`;
        // every reference into it borrows `self`, so none outlives this.
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

impl fmt::Debug for SharedRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedRegion")
            .field("fd", &self.fd)
            .field("len", &self.len)
            .field("data_start", &self.data_start)
            .finish()
    }
}

/// The device and inode of the object `fd` is open on, to compare with
/// [`SharedRegion::id`].
pub(crate) fn object_id(fd: &OwnedFd) -> io::Result<(u64, u64)> {
    Ok(stat_id(&rustix::fs::fstat(fd)?))
}

fn stat_id(stat: &rustix::fs::Stat) -> (u64, u64) {
    // The field types vary by architecture.
    #[allow(clippy::unnecessary_cast)]
    (stat.st_dev as u64, stat.st_ino as u64)
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}
