//! A connection's lane for large messages: a ring of fixed-size slots in a
//! memfd that one sending process fills and one receiving process drains,
//! both at once.
//!
//! A message of `LANE_MIN` (`pipe/lane.rs`) bytes or more does not go through
//! the socket. Its sender writes a small frame on the socket instead (the
//! message's length, with the lane's memfd attached) and then copies the
//! message into the lane one slot at a time, while the receiver copies the
//! slots out as they fill. Each byte is copied twice, as through a socket,
//! but with no socket buffers to allocate and free and one wake-up at most
//! per slot, so the two copies run side by side at memory speed.
//!
//! Two 32-bit counters say whose each slot is: `WRITTEN` (slots ever
//! filled, stored only by the writer) and `READ` (slots ever drained, stored
//! only by the reader). Slot `i % SLOTS` is the writer's while
//! `WRITTEN - READ < SLOTS` says it is free, and the reader's from the store
//! of `WRITTEN` that publishes it until the store of `READ` that hands it
//! back. [`SlotRing::write`] and [`SlotRing::read`] keep their own side's counter
//! in a local and only ever touch the slot it names, so whatever the other
//! process writes into the words, every copy stays inside the mapping.
//!
//! Each message says (in the frame that announces it) at which slot count
//! it starts, so the reader can skip slots that a reader before it, killed
//! in the middle of a message, left behind.
//!
//! A side that finds nothing to do spins a little, then sleeps on the other
//! side's counter (a futex), after raising its `*_SLEEPS` flag so the other
//! side knows to wake it. Sleeps are cut into periods of
//! [`CHECK_PERIOD`]; after each, the sleeper asks whether the other process
//! is still there (its tag, see [`crate::sys::owner`], and the caller's own
//! check of the socket), so a peer that dies mid-message is an error, never
//! a hang.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::ptr;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::time::{Duration, Instant};

use crate::sys::futex::CHECK_PERIOD;
use crate::sys::futex::{self, Slept};
use crate::sys::lock_word::Spin;
use crate::sys::owner;
use crate::sys::shm::SharedRegion;

const MAGIC: usize = 0;
const SLOT_LEN: usize = 4;
const SLOTS: usize = 8;
/// The tag of the process that made the lane, its only writer.
const WRITER_TAG: usize = 16;
// The writer's words and the reader's each on a line pair of their own.
const WRITTEN: usize = 128;
const WRITER_SLEEPS: usize = 132;
const READ: usize = 256;
const READER_SLEEPS: usize = 260;
/// The tag of the process in the middle of reading a message, or 0.
const READER_TAG: usize = 264;
/// Slots start on a page of their own.
const WORDS_LEN: usize = 4096;

const LANE_MAGIC: u32 = u32::from_le_bytes(*b"MPLN");
/// Slots of 128 KiB: a slot copies in about 20 µs, long enough that a
/// wake-up per slot costs little. 32 of them, 4 MiB, hold as much as the
/// socket's send buffer did, so a message that fitted there without a
/// reader (sent before the receiver starts, say) still does.
const DEFAULT_SLOT_LEN: u32 = 128 << 10;
const DEFAULT_SLOTS: u32 = 32;
/// Bounds a received lane's geometry must keep (its slot count must also
/// be a power of two).
const MAX_SLOT_LEN: u32 = 16 << 20;
const MAX_SLOTS: u32 = 1024;

/// A received lane's receive buffer is reserved up front up to this size;
/// beyond it, the buffer grows as slots arrive (a length is only a claim).
const MAX_RESERVE: usize = 64 << 20;

/// Why a lane transfer stopped short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Abandoned {
    /// The process on the other side died in the middle of the message.
    PeerDied,
    /// The caller's own check said the other side is gone.
    PeerGone,
    /// The message does not start where the lane's counters allow.
    OutOfStep,
    /// The reader's deadline passed: the slots read so far are taken (and
    /// their bytes in `out`); [`SlotRing::next_read`] says where to go on.
    TimedOut,
}

/// A lane, mapped.
#[derive(Debug)]
pub(crate) struct SlotRing {
    region: SharedRegion,
    slot_len: usize,
    slots: u32,
}

impl SlotRing {
    /// A new lane, written by this process.
    pub(crate) fn create() -> io::Result<SlotRing> {
        let data = DEFAULT_SLOT_LEN as usize * DEFAULT_SLOTS as usize;
        let region = SharedRegion::create("multiproc-lane", WORDS_LEN, data)?;
        region.atomic_u32(MAGIC).store(LANE_MAGIC, Relaxed);
        region.atomic_u32(SLOT_LEN).store(DEFAULT_SLOT_LEN, Relaxed);
        region.atomic_u32(SLOTS).store(DEFAULT_SLOTS, Relaxed);
        region
            .atomic_u64(WRITER_TAG)
            .store(owner::me().tag, Relaxed);
        Ok(SlotRing {
            region,
            slot_len: DEFAULT_SLOT_LEN as usize,
            slots: DEFAULT_SLOTS,
        })
    }

    /// The lane whose memfd `fd` is, received from its writer: the mapping
    /// kept in `cached` when it is the same object (the usual case: a writer
    /// sends its lane with every message), else a new one, checked and
    /// mapped, which replaces it.
    pub(crate) fn receive(cached: &mut Option<SlotRing>, fd: OwnedFd) -> io::Result<&SlotRing> {
        let id = super::shm::object_id(&fd)?;
        if cached.as_ref().is_some_and(|lane| lane.region.id() != id) {
            // Unmapped before the new one is mapped.
            *cached = None;
        }
        Ok(match cached {
            Some(lane) => lane,
            None => cached.insert(SlotRing::open(fd)?),
        })
    }

    fn open(fd: OwnedFd) -> io::Result<SlotRing> {
        let region = SharedRegion::open(fd, Some(WORDS_LEN))?;
        let magic = region.atomic_u32(MAGIC).load(Relaxed);
        let slot_len = region.atomic_u32(SLOT_LEN).load(Relaxed);
        let slots = region.atomic_u32(SLOTS).load(Relaxed);
        let fits = (slot_len as usize)
            .checked_mul(slots as usize)
            .is_some_and(|len| len <= region.data_len());
        if magic != LANE_MAGIC
            || !(1..=MAX_SLOT_LEN).contains(&slot_len)
            || !(1..=MAX_SLOTS).contains(&slots)
            // So that `count % slots` stays in step when a counter wraps.
            || !slots.is_power_of_two()
            || !fits
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the descriptor sent with a large message is not a multiproc lane",
            ));
        }
        Ok(SlotRing {
            region,
            slot_len: slot_len as usize,
            slots,
        })
    }

    /// The memfd, to send along with each message.
    pub(crate) fn as_fd(&self) -> BorrowedFd<'_> {
        self.region.as_fd()
    }

    fn word(&self, offset: usize) -> &AtomicU32 {
        self.region.atomic_u32(offset)
    }

    fn slot_ptr(&self, count: u32) -> *mut u8 {
        let index = (count % self.slots) as usize;
        self.region.data_ptr().wrapping_add(index * self.slot_len)
    }

    /// The slot count at which the next message written will start.
    pub(crate) fn next_slot(&self) -> u32 {
        // Only this process (the writer) stores `WRITTEN`.
        self.word(WRITTEN).load(Relaxed)
    }

    /// Copies `bytes` into the lane, slot by slot, as the reader frees them.
    /// Only the process that made the lane writes it, one message at a time
    /// (the connection's send lock and its per-process mutex see to it).
    /// `peer_gone` is asked after each [`CHECK_PERIOD`] spent waiting.
    pub(crate) fn write(
        &self,
        bytes: &[u8],
        mut peer_gone: impl FnMut() -> bool,
    ) -> Result<(), Abandoned> {
        // Only this process stores `WRITTEN`.
        let mut written = self.next_slot();
        for chunk in bytes.chunks(self.slot_len) {
            let free = |read: u32| written.wrapping_sub(read) < self.slots;
            self.wait_for(READ, WRITER_SLEEPS, READER_TAG, free, &mut peer_gone, None)?;
            // SAFETY: the slot lies in the mapping (index below `slots`, and
            // `slot_len * slots` fits the data part: `create` made it so and
            // `open` checked it), and `chunk` is at most `slot_len` bytes of
            // a Rust slice, not of the lane. No data race: the slot is free
            // (`written - READ < slots` with `READ` loaded `Acquire`, so the
            // reader's copy out of it happened before), and the reader
            // touches slot `written % slots` only after our `SeqCst` store
            // of `written + 1` below.
            unsafe {
                ptr::copy_nonoverlapping(chunk.as_ptr(), self.slot_ptr(written), chunk.len());
            }
            written = written.wrapping_add(1);
            self.publish(WRITTEN, written, READER_SLEEPS);
        }
        Ok(())
    }

    /// Appends a message of `len` bytes, starting at slot count `first`,
    /// from the lane to `out`, slot by slot as the writer fills them.
    /// `peer_gone` is asked after each [`CHECK_PERIOD`] spent waiting.
    ///
    /// Slots before `first` belong to an earlier message whose reader died
    /// before taking them all; they are skipped, so they never pass for
    /// part of this one.
    pub(crate) fn read(
        &self,
        first: u32,
        len: usize,
        out: &mut Vec<u8>,
        peer_gone: impl FnMut() -> bool,
        deadline: Option<Instant>,
    ) -> Result<(), Abandoned> {
        // Only one process reads at a time (one receiving process per end),
        // and the writer may check on it while it does. A read cut short by
        // its deadline leaves the message this process's, tag and all (so
        // the writer sees it die before it goes on), until it goes on or
        // gives up with [`stop_reading`](Self::stop_reading).
        let tag = self.region.atomic_u64(READER_TAG);
        tag.store(owner::me().tag, Release);
        let result = self.read_slots(first, len, out, peer_gone, deadline);
        if result != Err(Abandoned::TimedOut) {
            tag.store(0, Release);
        }
        result
    }

    /// This process leaves the message whose read timed out unfinished
    /// (its handle is gone): the writer no longer watches it.
    pub(crate) fn stop_reading(&self) {
        let tag = self.region.atomic_u64(READER_TAG);
        let _ = tag.compare_exchange(owner::me().tag, 0, Release, Relaxed);
    }

    /// The slot count the reader goes on from (after a [`read`](Self::read)
    /// that timed out, the rest of its message starts there).
    pub(crate) fn next_read(&self) -> u32 {
        self.word(READ).load(Relaxed)
    }

    fn read_slots(
        &self,
        first: u32,
        len: usize,
        out: &mut Vec<u8>,
        mut peer_gone: impl FnMut() -> bool,
        deadline: Option<Instant>,
    ) -> Result<(), Abandoned> {
        out.reserve(len.min(MAX_RESERVE));
        // Only this process stores `READ`.
        let mut read = self.word(READ).load(Relaxed);
        if read != first {
            // The writer wrote every slot before `first` and never runs more
            // than `slots` ahead of `READ`.
            if first.wrapping_sub(read) > self.slots {
                return Err(Abandoned::OutOfStep);
            }
            read = first;
            self.publish(READ, read, WRITER_SLEEPS);
        }
        let mut left = len;
        while left > 0 {
            let filled = |written: u32| written != read;
            self.wait_for(
                WRITTEN,
                READER_SLEEPS,
                WRITER_TAG,
                filled,
                &mut peer_gone,
                deadline,
            )?;
            let n = left.min(self.slot_len);
            out.reserve(n);
            let end = out.len();
            // SAFETY: the slot lies in the mapping (as in `write`) and `n` is
            // at most `slot_len`; the destination is `n` bytes of `out`'s
            // spare capacity (just reserved), not lane bytes. No data race:
            // the slot was published by a `SeqCst` store of `WRITTEN` past
            // `read` that our `Acquire` load saw, and the writer refills it
            // only after our store of `read + 1` below. The first `n` spare
            // bytes are initialised by the copy before `set_len` claims them.
            unsafe {
                ptr::copy_nonoverlapping(
                    self.slot_ptr(read).cast_const(),
                    out.as_mut_ptr().add(end),
                    n,
                );
                out.set_len(end + n);
            }
            read = read.wrapping_add(1);
            self.publish(READ, read, WRITER_SLEEPS);
            left -= n;
        }
        Ok(())
    }

    /// Waits until `ready` holds of the other side's counter (at offset
    /// `counter`): spins a little, then sleeps on the counter with this
    /// side's flag (at `sleeps`) raised. After each [`CHECK_PERIOD`] asleep
    /// it gives up if the process tagged at `peer_tag` has died, or
    /// `peer_gone` says the other side is gone; and at `deadline`, if any.
    fn wait_for(
        &self,
        counter: usize,
        sleeps: usize,
        peer_tag: usize,
        ready: impl Fn(u32) -> bool,
        peer_gone: &mut impl FnMut() -> bool,
        deadline: Option<Instant>,
    ) -> Result<(), Abandoned> {
        let word = self.word(counter);
        let mut spin = Spin::new();
        loop {
            if ready(word.load(Acquire)) {
                return Ok(());
            }
            if spin.spin() {
                continue;
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                return Err(Abandoned::TimedOut);
            }
            let period = left.map_or(CHECK_PERIOD, |left| left.min(CHECK_PERIOD));
            // Raised before looking again: the other side's `publish`
            // either comes before that look or sees the flag (`SeqCst`).
            self.word(sleeps).store(1, SeqCst);
            let seen = word.load(SeqCst);
            let waited = if ready(seen) {
                Slept::Woken
            } else {
                futex::wait(word, seen, Some(period))
            };
            self.word(sleeps).store(0, Relaxed);
            if waited == Slept::TimedOut {
                let peer = self.region.atomic_u64(peer_tag).load(Acquire);
                if peer != 0 && owner::is_dead(owner::tag_pid(peer), peer) {
                    return Err(Abandoned::PeerDied);
                }
                if peer_gone() {
                    return Err(Abandoned::PeerGone);
                }
            }
        }
    }

    /// Stores this side's counter (at offset `counter`), handing a slot to
    /// the other side, and wakes that side if its flag (at `other_sleeps`)
    /// says it sleeps.
    fn publish(&self, counter: usize, value: u32, other_sleeps: usize) {
        let word = self.word(counter);
        word.store(value, SeqCst);
        if self.word(other_sleeps).load(SeqCst) != 0 {
            futex::wake(word, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_crosses_between_two_threads() {
        let lane = SlotRing::create().unwrap();
        let fd = lane.as_fd().try_clone_to_owned().unwrap();
        let message: Vec<u8> = (0..5_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut cached = None;
        std::thread::scope(|s| {
            s.spawn(|| lane.write(&message, || false).unwrap());
            let reader = SlotRing::receive(&mut cached, fd).unwrap();
            let mut out = Vec::new();
            reader
                .read(0, message.len(), &mut out, || false, None)
                .unwrap();
            assert!(out == message);
        });
        // The same lane sent again is recognised and not mapped twice.
        let again = lane.as_fd().try_clone_to_owned().unwrap();
        let before = cached.as_ref().map(|l| l.region.data_ptr());
        SlotRing::receive(&mut cached, again).unwrap();
        assert_eq!(cached.as_ref().map(|l| l.region.data_ptr()), before);
    }

    #[test]
    fn a_reader_gives_up_when_told_the_writer_is_gone() {
        let lane = SlotRing::create().unwrap();
        let mut out = Vec::new();
        let mut asked = 0;
        let result = lane.read(
            0,
            10,
            &mut out,
            || {
                asked += 1;
                asked == 2
            },
            None,
        );
        assert_eq!(result, Err(Abandoned::PeerGone));
        assert_eq!(asked, 2);
    }

    #[test]
    fn a_writer_gives_up_when_told_the_reader_is_gone() {
        let lane = SlotRing::create().unwrap();
        let big = vec![1u8; 2 * lane.slot_len * lane.slots as usize];
        let result = lane.write(&big, || true);
        assert_eq!(result, Err(Abandoned::PeerGone));
    }

    /// A tag no living process has: its pid is above the kernel's largest.
    fn dead_tag() -> u64 {
        owner::tag(5_000_000, 1)
    }

    #[test]
    fn a_reader_notices_that_the_writer_died() {
        let lane = SlotRing::create().unwrap();
        lane.region
            .atomic_u64(WRITER_TAG)
            .store(dead_tag(), Relaxed);
        let result = lane.read(0, 10, &mut Vec::new(), || false, None);
        assert_eq!(result, Err(Abandoned::PeerDied));
        // It no longer claims to be reading.
        assert_eq!(lane.region.atomic_u64(READER_TAG).load(Relaxed), 0);
    }

    #[test]
    fn a_writer_notices_that_the_reader_died_mid_message() {
        let lane = SlotRing::create().unwrap();
        lane.region
            .atomic_u64(READER_TAG)
            .store(dead_tag(), Relaxed);
        let more_than_it_holds = 2 * lane.slot_len * lane.slots as usize;
        let result = lane.write(&vec![0u8; more_than_it_holds], || false);
        assert_eq!(result, Err(Abandoned::PeerDied));
    }

    #[test]
    fn slots_left_by_a_dead_reader_are_skipped() {
        let lane = SlotRing::create().unwrap();
        // Two messages of three slots each; the first one's reader took one
        // slot and died.
        let slot = lane.slot_len;
        lane.write(&vec![1u8; 3 * slot], || false).unwrap();
        let mut out = Vec::new();
        lane.read(0, slot, &mut out, || false, None).unwrap();
        let first = lane.next_slot();
        lane.write(&vec![2u8; 3 * slot], || false).unwrap();
        out.clear();
        lane.read(first, 3 * slot, &mut out, || false, None)
            .unwrap();
        assert!(out.len() == 3 * slot && out.iter().all(|&b| b == 2));
        // A start further ahead than the lane can be is refused.
        let far = lane.next_slot().wrapping_add(lane.slots + 1);
        let result = lane.read(far, 1, &mut out, || false, None);
        assert_eq!(result, Err(Abandoned::OutOfStep));
    }

    #[test]
    fn a_region_that_is_not_a_lane_is_refused() {
        let other = SharedRegion::create("not-a-lane", WORDS_LEN, 4096).unwrap();
        let fd = other.as_fd().try_clone_to_owned().unwrap();
        let err = SlotRing::receive(&mut None, fd).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn a_lane_whose_geometry_does_not_hold_is_refused() {
        for (word, value) in [(SLOTS, 24), (SLOTS, 0), (SLOT_LEN, 0), (SLOTS, 1 << 20)] {
            let lane = SlotRing::create().unwrap();
            lane.word(word).store(value, Relaxed);
            let fd = lane.as_fd().try_clone_to_owned().unwrap();
            let err = SlotRing::receive(&mut None, fd).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{word}: {value}");
        }
    }
}
