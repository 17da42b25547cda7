//! Bad input and dying children: typed errors, never a panic or a hang.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::time::Duration;

use multiproc::__private::{encode_frame_for_tests, spawn_unchecked_named, spawn_with_raw_call};
use multiproc::{ErrorKind, Fd, entry, process_entry, spawn};

#[process_entry]
fn add(a: i32, b: i32) -> i32 {
    a + b
}

/// Announces itself on `ready`, then returns a large result.
#[process_entry]
fn big_result(ready: Fd, len: usize) -> Vec<u64> {
    let mut ready = std::fs::File::from(ready.into_owned_fd());
    let _ = std::io::Write::write_all(&mut ready, &[1]);
    (0..len as u64).collect()
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let (r, w) = std::io::pipe().expect("pipe");
    (r.into(), w.into())
}

#[test]
fn unknown_entry_is_an_error_in_the_child_too() {
    let child = spawn_unchecked_named::<()>("faults::no_such_entry").unwrap();
    let err = child.join().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnknownEntry, "{err}");
    assert!(err.to_string().contains("faults::no_such_entry"), "{err}");
    assert_eq!(err.exitcode(), Some(2));
}

#[test]
fn garbage_call_bytes_are_a_decode_error() {
    let child = spawn_with_raw_call(entry!(add), b"this is not a frame at all".to_vec()).unwrap();
    let err = child.join().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode, "{err}");
    assert!(err.to_string().contains("magic"), "{err}");
}

#[test]
fn truncated_call_frame_is_a_decode_error() {
    let mut bytes = encode_frame_for_tests(1, 100, &[0u8; 40]);
    bytes.truncate(30);
    let err = spawn_with_raw_call(entry!(add), bytes)
        .unwrap()
        .join()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode, "{err}");
    assert!(err.to_string().contains("closed in the middle"), "{err}");
}

#[test]
fn frame_announcing_a_terabyte_is_rejected_before_allocating() {
    let bytes = encode_frame_for_tests(1, 1 << 40, &[]);
    let err = spawn_with_raw_call(entry!(add), bytes)
        .unwrap()
        .join()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode, "{err}");
    assert!(err.to_string().contains("1099511627776"), "{err}");
}

#[test]
fn well_framed_garbage_payload_is_a_decode_error() {
    let payload = [0xffu8; 64];
    let bytes = encode_frame_for_tests(1, payload.len() as u64, &payload);
    let err = spawn_with_raw_call(entry!(add), bytes)
        .unwrap()
        .join()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode, "{err}");
}

#[test]
fn wrong_frame_kind_is_a_decode_error() {
    let bytes = encode_frame_for_tests(2, 0, &[]);
    let err = spawn_with_raw_call(entry!(add), bytes)
        .unwrap()
        .join()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode, "{err}");
}

#[test]
fn child_killed_while_writing_its_result_reports_the_signal() {
    for _ in 0..5 {
        let (ready_r, ready_w) = pipe();
        let mut child = spawn!(big_result, Fd::from(ready_w), 4_000_000).unwrap();
        let mut byte = [0u8; 1];
        std::fs::File::from(ready_r).read_exact(&mut byte).unwrap();
        child.kill().unwrap();
        let err = child.join_timeout(Duration::from_secs(30)).unwrap_err();
        // Either killed before writing or part-way through: never a decode error.
        assert!(err.is_signaled(), "{err}");
        assert_eq!(err.exitcode(), Some(-9));
    }
}

#[test]
fn a_large_result_arrives_whole() {
    let (_ready_r, ready_w) = pipe();
    let v = spawn!(big_result, Fd::from(ready_w), 3_000_000)
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(v.len(), 3_000_000);
    assert!(v.iter().enumerate().all(|(i, x)| *x == i as u64));
}
