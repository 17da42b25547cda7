//! Handles received from another process are validated before use.

use std::os::fd::AsFd;

use rustix::fs::{MemfdFlags, SealFlags};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::wire::{self, FrameKind, OutFrame};
use crate::{Array, Barrier, ErrorKind, Event, Fd, Lock, Result, Value};

/// Sends `value` through a socket as a frame and decodes it as `T`, as a
/// child decoding its arguments would.
fn travel<T: DeserializeOwned>(value: &impl Serialize) -> Result<T> {
    let (a, b) = crate::sys::stream_pair()?;
    let mut frame = OutFrame::new();
    frame.encode(value)?;
    frame.send(a.as_fd(), FrameKind::Call)?;
    let mut buf = Vec::new();
    let frame = wire::recv_frame(b.as_fd(), &mut buf)
        .map_err(|e| e.into_error())?
        .expect("a frame");
    wire::decode(&buf, frame.fds)
}

fn memfd(len: u64, seals: SealFlags) -> Fd {
    let fd = rustix::fs::memfd_create("test", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .expect("memfd");
    rustix::fs::ftruncate(&fd, len).expect("ftruncate");
    if !seals.is_empty() {
        rustix::fs::fcntl_add_seals(&fd, seals).expect("seals");
    }
    Fd::from(fd)
}

fn decode_error<T: DeserializeOwned + std::fmt::Debug>(value: &impl Serialize) -> String {
    let err = travel::<T>(value).expect_err("decoding should fail");
    assert_eq!(err.kind(), ErrorKind::Decode, "{err}");
    err.to_string()
}

#[test]
fn a_lock_survives_the_trip_and_is_the_same_lock() {
    let lock = Lock::new().unwrap();
    let received: Lock = travel(&lock).unwrap();
    let held = received.lock().unwrap();
    assert!(lock.is_locked());
    drop(held);
    assert!(!lock.is_locked());
}

#[test]
fn a_pipe_received_as_a_lock_is_a_decode_error() {
    let (r, _w) = rustix::pipe::pipe().unwrap();
    let message = decode_error::<Lock>(&Fd::from(r));
    assert!(message.contains("not a shared-memory object"), "{message}");
}

#[test]
fn an_unsealed_memfd_is_a_decode_error() {
    let message = decode_error::<Lock>(&memfd(4096, SealFlags::empty()));
    assert!(message.contains("sealed"), "{message}");
}

#[test]
fn a_too_small_memfd_is_a_decode_error() {
    let seals = SealFlags::SHRINK | SealFlags::GROW;
    let message = decode_error::<Lock>(&memfd(8, seals));
    assert!(message.contains("too small"), "{message}");
    decode_error::<Lock>(&memfd(0, seals));
    decode_error::<Barrier>(&memfd(16, seals));
}

#[test]
fn a_zeroed_memfd_is_a_decode_error() {
    let seals = SealFlags::SHRINK | SealFlags::GROW;
    let message = decode_error::<Lock>(&memfd(4096, seals));
    assert!(message.contains("not a multiproc::Lock"), "{message}");
}

#[test]
fn a_handle_of_another_kind_is_a_decode_error() {
    let event = Event::new().unwrap();
    decode_error::<Lock>(&event);
    let value = Value::new(7u32).unwrap();
    decode_error::<Value<u64>>(&value);
    decode_error::<Array<u32>>(&value);
    let array = Array::<u32>::new(3).unwrap();
    decode_error::<Value<u32>>(&array);
    let received: Array<u32> = travel(&array).unwrap();
    assert_eq!(received.len(), 3);
}

#[test]
fn serializing_a_handle_outside_multiproc_is_an_error() {
    let lock = Lock::new().unwrap();
    let err = bincode::serde::encode_to_vec(&lock, bincode::config::standard()).unwrap_err();
    assert!(err.to_string().contains("multiproc handles"), "{err}");
}
