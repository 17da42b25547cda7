//! Frames, descriptors and the side table, over real socketpairs.

use std::os::fd::{AsFd, OwnedFd};

use super::handles::{MODE, Mode, OUT_FDS, codec_error};
use super::*;

fn pair() -> (OwnedFd, OwnedFd) {
    crate::sys::stream_pair().unwrap()
}

fn feed(bytes: &[u8]) -> Result<Option<InFrame>, FrameError> {
    let (a, b) = pair();
    send_all(a.as_fd(), bytes, &[]).unwrap();
    drop(a);
    let mut buf = Vec::new();
    recv_frame(b.as_fd(), &mut buf)
}

#[test]
fn frame_round_trips_with_descriptors() {
    let (a, b) = pair();
    let (pr, pw) = rustix::pipe::pipe().unwrap();
    let mut out = OutFrame::new();
    out.encode(&(String::from("hi"), crate::Fd::from(pw)))
        .unwrap();
    out.send(a.as_fd(), FrameKind::Value).unwrap();
    let mut buf = Vec::new();
    let frame = recv_frame(b.as_fd(), &mut buf).unwrap().unwrap();
    assert_eq!(frame.kind, FrameKind::Value);
    assert_eq!(frame.fds.len(), 1);
    let (text, fd): (String, crate::Fd) = decode(&buf, frame.fds).unwrap();
    assert_eq!(text, "hi");
    rustix::io::write(&fd, b"x").unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(rustix::io::read(&pr, &mut byte).unwrap(), 1);
}

#[test]
fn clean_end_of_stream_is_none() {
    assert!(matches!(feed(&[]), Ok(None)));
}

#[test]
fn garbage_is_bad_magic() {
    assert!(matches!(
        feed(b"GARBAGE!GARBAGE!"),
        Err(FrameError::BadMagic(_))
    ));
}

#[test]
fn short_header_is_truncated() {
    let bytes = encode_frame_for_tests(2, 10, &[]);
    assert!(matches!(
        feed(&bytes[..7]),
        Err(FrameError::Truncated { got: 7, .. })
    ));
}

#[test]
fn short_payload_is_truncated() {
    let bytes = encode_frame_for_tests(2, 10, &[1, 2, 3]);
    assert!(matches!(feed(&bytes), Err(FrameError::Truncated { .. })));
}

#[test]
fn oversized_frame_is_rejected_from_its_header() {
    let bytes = encode_frame_for_tests(2, 1 << 40, &[]);
    assert!(matches!(feed(&bytes), Err(FrameError::TooLarge(n)) if n == 1 << 40));
}

#[test]
fn unknown_version_and_kind_are_rejected() {
    let mut bytes = encode_frame_for_tests(2, 0, &[]);
    bytes[4] = 99;
    assert!(matches!(feed(&bytes), Err(FrameError::BadVersion(99))));
    let bytes = encode_frame_for_tests(77, 0, &[]);
    assert!(matches!(feed(&bytes), Err(FrameError::BadKind(77))));
}

#[test]
fn announced_descriptors_must_arrive() {
    let mut bytes = encode_frame_for_tests(2, 0, &[]);
    bytes[6] = 3;
    assert!(matches!(
        feed(&bytes),
        Err(FrameError::FdMismatch { want: 3, got: 0 })
    ));
}

#[test]
fn serializing_a_handle_outside_the_wire_is_an_error() {
    let (_r, w) = rustix::pipe::pipe().unwrap();
    let fd = crate::Fd::from(w);
    let mut buf = Vec::new();
    let err = super::codec::encode_into(&fd, &mut buf)
        .map_err(|e| codec_error(crate::ErrorKind::Encode, e))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("only be (de)serialized by multiproc"),
        "{err}"
    );
}

#[test]
fn a_panicking_serializer_leaves_the_thread_outside_any_encode() {
    struct Panics;
    impl serde::Serialize for Panics {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            panic!("a user's Serialize panicked");
        }
    }
    let (_r, w) = rustix::pipe::pipe().unwrap();
    let fd = crate::Fd::from(w);
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // A handle first, so the encode holds a descriptor when it panics.
        OutFrame::new().encode(&(&fd, Panics))
    }));
    assert!(caught.is_err());
    assert_eq!(MODE.get(), Mode::Idle);
    assert!(OUT_FDS.with_borrow(Vec::is_empty));
    // So a handle serialized outside the wire is refused again.
    let err = super::codec::encode_into(&fd, &mut Vec::new())
        .map_err(|e| codec_error(crate::ErrorKind::Encode, e))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("only be (de)serialized by multiproc")
    );
}

#[test]
fn an_encode_nested_in_another_keeps_each_ones_descriptors() {
    // A value whose serializer encodes a handle of its own on the side.
    struct EncodesInside<'a>(&'a crate::Fd);
    impl serde::Serialize for EncodesInside<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut inner = OutFrame::new();
            inner.encode(self.0).unwrap();
            assert_eq!(inner.fds().len(), 1);
            s.serialize_u8(0)
        }
    }
    let (_r, w) = rustix::pipe::pipe().unwrap();
    let fd = crate::Fd::from(w);
    let mut outer = OutFrame::new();
    outer.encode(&(&fd, EncodesInside(&fd), &fd)).unwrap();
    assert_eq!(outer.fds().len(), 2);
    assert_eq!(MODE.get(), Mode::Idle);
}

#[test]
fn handle_index_that_was_not_sent_is_a_decode_error() {
    let mut buf = Vec::new();
    super::codec::encode_into(&5u32, &mut buf).unwrap();
    let err = decode::<crate::Fd>(&buf, Vec::new()).unwrap_err();
    assert!(err.is_decode(), "{err}");
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn descriptors_no_frame_announced_are_closed_and_reported() {
    let (a, b) = pair();
    let (r, w) = rustix::pipe::pipe().unwrap();
    let before = open_fds();
    // Frames that announce no descriptors but carry 200 each: none may be
    // handed to a later frame or pile up in the receiver.
    let mut bytes = header(FrameKind::Bytes, 0, 2).to_vec();
    bytes.extend_from_slice(b"hi");
    let extra: Vec<_> = (0..200)
        .map(|i| if i % 2 == 0 { r.as_fd() } else { w.as_fd() })
        .collect();
    let mut reader = FrameReader::default();
    let mut out = Vec::new();
    let mut errors = 0;
    for _ in 0..50 {
        send_all(a.as_fd(), &bytes, &extra).unwrap();
        loop {
            match reader.recv(b.as_fd(), &mut out, None, None) {
                Ok(Some((frame, _))) => {
                    assert!(frame.fds.is_empty());
                    break;
                }
                Err(FrameError::Unannounced(200)) => errors += 1,
                other => panic!("{other:?}"),
            }
        }
        // (Other tests of this binary may hold a few descriptors too.)
        assert!(open_fds() <= before + 400, "descriptors pile up");
    }
    // Each frame after the first reports the batch before it.
    assert_eq!(errors, 49);
    drop(a);
    assert!(matches!(
        reader.recv(b.as_fd(), &mut out, None, None),
        Err(FrameError::Unannounced(200))
    ));
    assert!(matches!(
        reader.recv(b.as_fd(), &mut out, None, None),
        Ok(None)
    ));
    // Every copy of the write end is closed: the read end sees end of file
    // (soon rather than at once: another test's spawn may hold a forked
    // copy of every descriptor until it execs).
    drop(w);
    rustix::io::ioctl_fionbio(&r, true).unwrap();
    let start = std::time::Instant::now();
    while rustix::io::read(&r, &mut [0u8; 1]) != Ok(0) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "a received copy of the pipe's write end is still open"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[test]
fn a_frame_claims_exactly_the_descriptors_that_came_with_it() {
    let (a, b) = pair();
    let (r, w) = rustix::pipe::pipe().unwrap();
    // Announces two, carries three: a mismatch, not two now and one later.
    let mut bytes = header(FrameKind::Bytes, 2, 1).to_vec();
    bytes.push(7);
    send_all(a.as_fd(), &bytes, &[r.as_fd(), w.as_fd(), r.as_fd()]).unwrap();
    let mut reader = FrameReader::default();
    let mut out = Vec::new();
    assert!(matches!(
        reader.recv(b.as_fd(), &mut out, None, None),
        Err(FrameError::FdMismatch { want: 2, got: 3 })
    ));
}

/// This process's virtual size, in bytes (`VmSize`).
fn vm_size() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmSize:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib << 10
}

#[test]
fn a_frame_announcing_two_gibibytes_costs_only_the_bytes_that_came() {
    // Both receive paths: the control socket's and a connection's.
    for read_ahead in [false, true] {
        let (a, b) = pair();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let receiver = std::thread::spawn(move || {
            let _ = tid_tx.send(rustix::thread::gettid().as_raw_nonzero().get());
            let mut buf = Vec::new();
            if read_ahead {
                FrameReader::default()
                    .recv(b.as_fd(), &mut buf, None, None)
                    .map(|_| ())
            } else {
                recv_frame(b.as_fd(), &mut buf).map(|_| ())
            }
        });
        let tid = tid_rx.recv().unwrap();
        let before = vm_size();
        let mut bytes = header(FrameKind::Bytes, 0, MAX_FRAME_LEN - 1).to_vec();
        bytes.extend_from_slice(&[7; 100]);
        send_all(a.as_fd(), &bytes, &[]).unwrap();
        // Asleep waiting for the rest (the announced length passed the cap).
        let start = std::time::Instant::now();
        loop {
            let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
            if stat.as_bytes()[stat.rfind(')').unwrap() + 2] == b'S' {
                break;
            }
            assert!(start.elapsed() < std::time::Duration::from_secs(20));
            std::thread::yield_now();
        }
        let grown = vm_size().saturating_sub(before);
        drop(a);
        assert!(matches!(
            receiver.join().unwrap(),
            Err(FrameError::Truncated { .. })
        ));
        // 2 GiB announced; a few pages for 100 bytes (other tests of this
        // binary may map some memory meanwhile).
        assert!(
            grown < 256 << 20,
            "grew by {grown} bytes (read ahead: {read_ahead})"
        );
    }
}

/// Found by the `call_frame` fuzz target: a few bytes announcing a 1 GiB
/// string made bincode allocate 1 GiB before finding the bytes missing.
#[test]
fn a_length_prefix_allocates_only_in_proportion_to_the_input() {
    // bincode's varint: 0xfc then a u32; postcard's LEB128.
    let mut huge = vec![0xfc];
    huge.extend_from_slice(&(1u32 << 30).to_le_bytes());
    #[cfg(feature = "postcard")]
    let huge = vec![0x80, 0x80, 0x80, 0x80, 0x04];
    let err = super::codec::decode::<String>(&huge).unwrap_err();
    #[cfg(not(feature = "postcard"))]
    assert!(err.contains("LimitExceeded"), "{err}");
    let _ = err;
    // Values whose decoding claims the most per byte still decode.
    let zeros = vec![0u128; 100_000];
    let text = "x".repeat(300_000);
    let mut buf = Vec::new();
    super::codec::encode_into(&(&zeros, &text), &mut buf).unwrap();
    let (z, t): (Vec<u128>, String) = super::codec::decode(&buf).unwrap();
    assert_eq!((z, t), (zeros, text));
}

/// A sender that finishes its frame and dies between the reader's poll
/// timing out and its death check (its socket held open by a process it
/// forked): the frame is whole in the socket and must be read, not
/// reported lost.
#[test]
fn a_frame_finished_just_before_its_sender_died_is_received() {
    let (a, b) = pair();
    let mut bytes = header(FrameKind::Bytes, 0, 10).to_vec();
    bytes.extend_from_slice(&[1, 2, 3]);
    send_all(a.as_fd(), &bytes, &[]).unwrap();
    let finished = std::cell::Cell::new(false);
    // Called only once the reader found no bytes for a while: the sender
    // writes the rest and dies just then; `a` stays open, as a fork's
    // copy of the socket would.
    let died = || {
        if !finished.replace(true) {
            send_all(a.as_fd(), &[4, 5, 6, 7, 8, 9, 10], &[]).unwrap();
        }
        true
    };
    let mut reader = FrameReader::default();
    let mut out = Vec::new();
    let got = reader.recv(b.as_fd(), &mut out, Some(&died), None);
    let Ok(Some((frame, at))) = got else {
        panic!("the finished frame was lost: {got:?}");
    };
    assert_eq!(frame.kind, FrameKind::Bytes);
    let payload = at.map_or(out.clone(), |at| reader.bytes(at).to_vec());
    assert_eq!(payload, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
}
