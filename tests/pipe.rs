//! Pipe and Connection across real processes: sizes, order, handles, peer death, bad frames.

mod common;

use common::{HandleOrNumber, write_end_closed};

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use multiproc::__private::encode_frame_for_tests;
use multiproc::{
    Connection, ErrorKind, Fd, Pipe, Queue, RecvError, RecvTimeoutError, TryRecvError,
};
use multiproc::{process_entry, spawn};

type Msg = (i32, Option<i32>, String);

#[process_entry]
fn send_greeting(conn: Connection<Msg>) {
    conn.send(&(42, None, "hello".to_string())).unwrap();
    conn.close();
}

#[test]
fn child_sends_through_its_end_of_a_pipe() {
    let (parent_conn, child_conn) = Pipe::duplex().unwrap();
    let p = spawn!(send_greeting, child_conn).unwrap();
    assert_eq!(parent_conn.recv().unwrap(), (42, None, "hello".to_string()));
    p.join().unwrap();
    // The child's end is gone now.
    assert_eq!(parent_conn.recv(), Err(RecvError::Disconnected));
}

#[process_entry]
fn echo_until_disconnected(conn: Connection<Vec<u8>>) -> usize {
    let mut n = 0;
    while let Ok(msg) = conn.recv() {
        conn.send(&msg).unwrap();
        n += 1;
    }
    n
}

#[test]
fn messages_of_every_size_arrive_whole_and_in_order() {
    let (conn, child_conn) = Pipe::<Vec<u8>>::duplex().unwrap();
    let child = spawn!(echo_until_disconnected, child_conn).unwrap();
    let sizes = [0usize, 1, 15, 16, 17, 4095, 65536, 65537, 1 << 20, 16 << 20];
    for (i, &size) in sizes.iter().enumerate() {
        let msg: Vec<u8> = (0..size).map(|j| (i * 31 + j) as u8).collect();
        conn.send(&msg).unwrap();
        assert_eq!(conn.recv().unwrap(), msg, "size {size}");
    }
    drop(conn);
    assert_eq!(child.join().unwrap(), sizes.len());
}

#[process_entry]
fn count_up(conn: Connection<u64>, n: u64) {
    for i in 0..n {
        conn.send(&i).unwrap();
    }
}

#[test]
fn ten_thousand_messages_keep_their_order() {
    let (rx, tx) = Pipe::<u64>::simplex().unwrap();
    let child = spawn!(count_up, tx, 10_000).unwrap();
    for i in 0..10_000 {
        assert_eq!(rx.recv().unwrap(), i);
    }
    child.join().unwrap();
    assert!(matches!(rx.recv(), Err(RecvError::Disconnected)));
}

#[test]
fn send_bytes_and_recv_bytes_skip_the_codec() {
    let (a, b) = Pipe::<String>::duplex().unwrap();
    a.send_bytes(b"raw").unwrap();
    a.send(&"typed".to_string()).unwrap();
    assert_eq!(b.recv_bytes().unwrap(), b"raw");
    // The encoding of a typed message is still a message of bytes.
    assert!(!b.recv_bytes().unwrap().is_empty());
}

#[test]
fn simplex_ends_go_one_way() {
    let (rx, tx) = Pipe::<u8>::simplex().unwrap();
    assert!(rx.readable() && !rx.writable());
    assert!(tx.writable() && !tx.readable());
    // Caller mistakes, not OS failures.
    assert_eq!(rx.send(&1).unwrap_err().kind(), ErrorKind::InvalidInput);
    assert!(matches!(tx.recv(), Err(RecvError::Failed(e)) if e.kind() == ErrorKind::InvalidInput));
    // `poll` on the send-only end does not wait: the `recv` it invites
    // fails at once, saying why.
    assert!(tx.poll(common::BOUND));
    tx.send(&7).unwrap();
    assert_eq!(rx.recv().unwrap(), 7);
}

#[test]
fn threads_sharing_an_end_never_interleave_messages() {
    let (a, b) = Pipe::<Vec<u8>>::duplex().unwrap();
    let a = std::sync::Arc::new(a);
    let senders: Vec<_> = (0..4u8)
        .map(|t| {
            let a = a.clone();
            std::thread::spawn(move || {
                for _ in 0..20 {
                    a.send(&vec![t; 300_000]).unwrap();
                }
            })
        })
        .collect();
    for _ in 0..80 {
        let msg = b.recv().unwrap();
        assert_eq!(msg.len(), 300_000);
        assert!(msg.iter().all(|&x| x == msg[0]), "interleaved message");
    }
    for s in senders {
        s.join().unwrap();
    }
}

#[process_entry]
fn serve_over_forwarded_conn(control: Connection<Connection<u32>>) -> u32 {
    // Receive a connection from a process that is already running, then use it.
    let conn = control.recv().unwrap();
    let x = conn.recv().unwrap();
    conn.send(&(x * 2)).unwrap();
    x
}

#[test]
fn a_connection_sent_to_a_running_process_works_there() {
    let (control, child_control) = Pipe::<Connection<u32>>::duplex().unwrap();
    let child = spawn!(serve_over_forwarded_conn, child_control).unwrap();
    let (mine, theirs) = Pipe::<u32>::duplex().unwrap();
    control.send(&theirs).unwrap();
    drop(theirs);
    mine.send(&21).unwrap();
    assert_eq!(mine.recv().unwrap(), 42);
    assert_eq!(child.join().unwrap(), 21);
    assert!(matches!(mine.recv(), Err(RecvError::Disconnected)));
}

#[process_entry]
fn hold_until_killed(conn: Connection<u8>, ready: Fd) {
    std::fs::File::from(ready.into_owned_fd()).write_all_byte();
    let _ = conn.recv();
}

trait WriteByte {
    fn write_all_byte(self);
}

impl WriteByte for std::fs::File {
    fn write_all_byte(mut self) {
        std::io::Write::write_all(&mut self, &[1]).unwrap();
    }
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let (r, w) = std::io::pipe().unwrap();
    (r.into(), w.into())
}

fn wait_byte(fd: OwnedFd) {
    let mut b = [0u8; 1];
    std::fs::File::from(fd).read_exact(&mut b).unwrap();
}

#[test]
fn peer_death_is_disconnected_for_recv_and_send() {
    let (conn, child_conn) = Pipe::<u8>::duplex().unwrap();
    let (ready_r, ready_w) = pipe();
    let child = spawn!(hold_until_killed, child_conn, Fd::from(ready_w)).unwrap();
    wait_byte(ready_r);
    child.kill().unwrap();
    assert!(child.join().unwrap_err().is_signaled());
    assert!(matches!(conn.recv(), Err(RecvError::Disconnected)));
    let err = conn.send(&1).unwrap_err();
    assert!(err.is_disconnected(), "{err}");
}

#[test]
fn recv_timeout_returns_within_bounds() {
    let (a, _b) = Pipe::<u8>::duplex().unwrap();
    let start = Instant::now();
    assert!(matches!(
        a.recv_timeout(Duration::from_millis(300)),
        Err(RecvTimeoutError::Timeout)
    ));
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    assert!(waited <= Duration::from_millis(800), "{waited:?}");
    assert_eq!(a.try_recv(), Err(TryRecvError::Empty));
    assert!(!a.poll(Duration::ZERO));
}

#[test]
fn a_receive_with_a_deadline_gives_up_on_time_while_another_thread_receives() {
    let (a, b) = Pipe::<u32>::duplex().unwrap();
    let a = &a;
    std::thread::scope(|s| {
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let receiver = s.spawn(move || {
            let _ = tid_tx.send(rustix::thread::gettid().as_raw_nonzero().get() as u32);
            a.recv()
        });
        let tid = tid_rx.recv().unwrap();
        // Asleep: inside `recv`, waiting for a message (it has nothing
        // else to sleep on).
        common::until_asleep("the other thread waits in recv", tid);
        let deadline = Duration::from_millis(300);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        s.spawn(move || {
            let start = Instant::now();
            let timed = a.recv_timeout(deadline);
            let waited = start.elapsed();
            let start = Instant::now();
            let tried = a.try_recv();
            let _ = done_tx.send((timed, waited, tried, start.elapsed()));
        });
        let outcome = done_rx.recv_timeout(common::BOUND);
        // Two messages: one for each thread, should both still wait.
        b.send(&1).unwrap();
        b.send(&2).unwrap();
        let (timed, waited, tried, tried_for) =
            outcome.expect("recv_timeout waited for the other thread's recv to end");
        assert!(matches!(timed, Err(RecvTimeoutError::Timeout)), "{timed:?}");
        assert!(waited >= deadline, "{waited:?}");
        assert!(
            waited <= deadline + Duration::from_millis(500),
            "{waited:?}"
        );
        assert_eq!(tried, Err(TryRecvError::Empty));
        assert!(tried_for < Duration::from_millis(500), "{tried_for:?}");
        // The other thread still gets its message.
        assert_eq!(receiver.join().unwrap().unwrap(), 1);
    });
}

fn write_raw(conn: &impl AsFd, bytes: &[u8]) {
    let mut written = 0;
    while written < bytes.len() {
        written += rustix::io::write(conn.as_fd(), &bytes[written..]).unwrap();
    }
}

#[test]
fn garbage_on_a_connection_is_a_typed_error_and_breaks_it() {
    let (a, b) = Pipe::<u32>::duplex().unwrap();
    write_raw(&b, b"definitely not a frame");
    let err = match a.recv() {
        Err(RecvError::Failed(e)) => e,
        other => panic!("expected a failure, got {other:?}"),
    };
    assert!(err.is_decode(), "{err}");
    // The stream cannot be re-synchronised: later receives fail too.
    b.send(&1).unwrap();
    assert!(matches!(a.recv(), Err(RecvError::Failed(_))));
}

#[test]
fn oversized_frame_is_rejected_without_allocating() {
    let (a, b) = Pipe::<u32>::duplex().unwrap();
    write_raw(&b, &encode_frame_for_tests(5, 1 << 40, &[]));
    match a.recv() {
        Err(RecvError::Failed(e)) => assert!(e.to_string().contains("1099511627776"), "{e}"),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn truncated_frame_then_close_is_a_typed_error() {
    let (a, b) = Pipe::<u32>::duplex().unwrap();
    let frame = encode_frame_for_tests(5, 100, &[7; 50]);
    write_raw(&b, &frame);
    drop(b);
    match a.recv() {
        Err(RecvError::Failed(e)) => assert!(e.to_string().contains("middle of a frame"), "{e}"),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn undecodable_message_is_an_error_and_the_next_one_still_arrives() {
    let (a, b) = Pipe::<String>::duplex().unwrap();
    // A well-framed message whose payload is not a String.
    write_raw(&b, &encode_frame_for_tests(5, 3, &[0xff, 0xff, 0xff]));
    b.send(&"after".to_string()).unwrap();
    match a.recv() {
        Err(RecvError::Failed(e)) => assert!(e.is_decode(), "{e}"),
        other => panic!("expected a decode failure, got {other:?}"),
    }
    assert_eq!(a.recv().unwrap(), "after");
}

/// Encodes as a number; its `Deserialize` refuses every one but 7.
#[derive(Debug, PartialEq)]
struct OnlySeven(u32);

impl serde::Serialize for OnlySeven {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for OnlySeven {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u32::deserialize(d)? {
            7 => Ok(OnlySeven(7)),
            n => Err(serde::de::Error::custom(format!("{n} is not seven"))),
        }
    }
}

#[test]
fn a_message_that_refuses_to_decode_says_what_its_deserialize_said() {
    let (a, b) = Pipe::<OnlySeven>::duplex().unwrap();
    b.send(&OnlySeven(3)).unwrap();
    b.send(&OnlySeven(7)).unwrap();
    match a.recv() {
        Err(RecvError::Failed(e)) => {
            assert!(e.is_decode(), "{e}");
            let said = format!("{e:#}");
            // postcard's error does not keep serde's custom message.
            let reason = if cfg!(feature = "postcard") {
                "Serde Deserialization Error"
            } else {
                "3 is not seven"
            };
            assert!(said.ends_with(reason), "{said}");
        }
        other => panic!("expected a decode failure, got {other:?}"),
    }
    assert_eq!(a.recv().unwrap(), OnlySeven(7));
}

#[test]
fn a_frame_of_another_kind_is_a_decode_error_and_the_next_message_still_arrives() {
    let (a, b) = Pipe::<u32>::duplex().unwrap();
    // A child's result frame (kind 2) whose payload is a well-encoded
    // `u32`: whole, but not a message on a channel.
    write_raw(&b, &encode_frame_for_tests(2, 1, &[7]));
    b.send(&8).unwrap();
    match a.recv() {
        Err(RecvError::Failed(e)) => {
            assert!(e.is_decode() && e.to_string().contains("kind"), "{e}")
        }
        other => panic!("expected a decode failure, got {other:?}"),
    }
    assert_eq!(a.recv().unwrap(), 8);
}

#[process_entry]
fn send_a_handle_then_a_number(conn: Connection<HandleOrNumber>, fd: Fd) {
    conn.send(&HandleOrNumber(Some(fd), 0)).unwrap();
    conn.send(&HandleOrNumber(None, 7)).unwrap();
}

#[test]
fn a_handle_where_none_is_expected_is_a_decode_error_and_is_closed() {
    let (mine, theirs) = Pipe::<HandleOrNumber>::duplex().unwrap();
    let (r, w) = pipe();
    let child = spawn!(send_a_handle_then_a_number, theirs, Fd::from(w)).unwrap();
    // The handle's index must not pass for the number expected there.
    match mine.recv() {
        Err(RecvError::Failed(e)) => {
            assert!(e.is_decode() && e.to_string().contains("handle"), "{e}")
        }
        other => panic!("expected a decode failure, got {other:?}"),
    }
    // The stream is intact: the next message arrives.
    assert!(matches!(mine.recv().unwrap(), HandleOrNumber(None, 7)));
    child.join().unwrap();
    // No copy of the handle was kept: the child's went with it, and the
    // refused message's was closed.
    assert!(write_end_closed(&r), "the refused handle was kept open");
}

#[process_entry]
fn write_to_all(fds: Connection<Vec<Fd>>) -> usize {
    let fds = fds.recv().unwrap();
    let n = fds.len();
    for (i, fd) in fds.into_iter().enumerate() {
        rustix::io::write(&fd, &[i as u8]).unwrap();
    }
    n
}

#[test]
fn sixty_four_handles_in_one_message() {
    let (conn, child_conn) = Pipe::<Vec<Fd>>::duplex().unwrap();
    let child = spawn!(write_to_all, child_conn).unwrap();
    let pipes: Vec<(OwnedFd, OwnedFd)> = (0..64).map(|_| pipe()).collect();
    let fds: Vec<Fd> = pipes
        .iter()
        .map(|(_, w)| Fd::from(w.try_clone().unwrap()))
        .collect();
    conn.send(&fds).unwrap();
    assert_eq!(child.join().unwrap(), 64);
    for (i, (r, _)) in pipes.iter().enumerate() {
        let mut byte = [0u8; 1];
        rustix::io::read(r, &mut byte).unwrap();
        assert_eq!(byte[0], i as u8);
    }
}

#[process_entry]
fn send_uniform(tx: Connection<Vec<u8>>, fill: u8, count: usize, size: usize) {
    for _ in 0..count {
        tx.send(&vec![fill; size]).unwrap();
    }
}

#[test]
fn processes_sharing_an_end_never_interleave_messages() {
    let (rx, tx) = Pipe::<Vec<u8>>::simplex().unwrap();
    // Each message is far larger than the socket buffer, so without the
    // end's shared lock the two writers' bytes would mix.
    let children: Vec<_> = (1..=3u8)
        .map(|fill| spawn!(send_uniform, tx.try_clone().unwrap(), fill, 10, 1 << 20).unwrap())
        .collect();
    drop(tx);
    let mut per_fill = [0usize; 4];
    for _ in 0..30 {
        let msg = rx.recv().unwrap();
        assert_eq!(msg.len(), 1 << 20);
        assert!(msg.iter().all(|&x| x == msg[0]), "interleaved message");
        per_fill[msg[0] as usize] += 1;
    }
    assert_eq!(per_fill, [0, 10, 10, 10]);
    for child in children {
        child.join().unwrap();
    }
    assert!(matches!(rx.recv(), Err(RecvError::Disconnected)));
}

#[test]
fn messages_read_ahead_are_seen_by_try_recv_poll_and_recv_timeout() {
    let (a, b) = Pipe::<u32>::duplex().unwrap();
    for i in 0..3 {
        b.send(&i).unwrap();
    }
    // One read takes all three frames off the socket.
    assert_eq!(a.recv().unwrap(), 0);
    assert!(a.poll(Duration::ZERO));
    assert_eq!(a.try_recv().unwrap(), 1);
    assert_eq!(a.recv_timeout(Duration::from_millis(10)).unwrap(), 2);
    assert!(matches!(a.try_recv(), Err(TryRecvError::Empty)));
}

#[test]
fn a_connection_with_unread_data_refuses_to_travel() {
    let (a, b) = Pipe::<u32>::duplex().unwrap();
    b.send(&1).unwrap();
    b.send(&2).unwrap();
    assert_eq!(a.recv().unwrap(), 1);
    let (carrier, _other) = Pipe::<Connection<u32>>::duplex().unwrap();
    let err = carrier.send(&a).unwrap_err();
    assert!(err.to_string().contains("not yet read"), "{err}");
    assert_eq!(a.recv().unwrap(), 2);
}

#[test]
fn clones_of_an_end_share_one_stream() {
    let (a, b) = Pipe::<u32>::duplex().unwrap();
    let a2 = a.try_clone().unwrap();
    b.send(&1).unwrap();
    b.send(&2).unwrap();
    assert_eq!(a.recv().unwrap(), 1);
    assert_eq!(a2.recv().unwrap(), 2);
}

#[test]
fn huge_timeouts_do_not_overflow() {
    let (a, b) = Pipe::<u32>::duplex().unwrap();
    b.send(&9).unwrap();
    assert_eq!(a.recv_timeout(Duration::MAX).unwrap(), 9);
}

#[process_entry]
fn half_a_frame_then_wait(conn: Connection<u32>, ready: Fd) {
    // A header that announces 100 bytes, and only 10 of them.
    write_raw(&conn, &encode_frame_for_tests(5, 100, &[1; 10]));
    std::fs::File::from(ready.into_owned_fd()).write_all_byte();
    let mut byte = [0u8; 1];
    let _ = rustix::io::read(&conn, &mut byte);
}

#[test]
fn peer_killed_mid_message_is_a_typed_error_then_broken() {
    let (conn, theirs) = Pipe::<u32>::duplex().unwrap();
    let (ready_r, ready_w) = pipe();
    let child = spawn!(half_a_frame_then_wait, theirs, Fd::from(ready_w)).unwrap();
    wait_byte(ready_r);
    child.kill().unwrap();
    assert!(child.join().unwrap_err().is_signaled());
    match conn.recv() {
        Err(RecvError::Failed(e)) => assert!(e.to_string().contains("middle of a frame"), "{e}"),
        other => panic!("expected a truncated frame, got {other:?}"),
    }
    assert!(matches!(conn.recv(), Err(RecvError::Failed(_))));
}

#[process_entry]
fn sum_and_answer(conn: Connection<(Vec<u64>, Connection<u32>)>) -> u64 {
    let (numbers, reply) = conn.recv().unwrap();
    reply.send(&(numbers.len() as u32)).unwrap();
    numbers.iter().fold(0u64, |a, &b| a.wrapping_add(b))
}

#[test]
fn a_large_typed_message_carries_its_handles() {
    // Megabytes of encoded numbers, so the message goes through the lane,
    // and a connection that must arrive working alongside them.
    let numbers: Vec<u64> = (0..400_000u64)
        .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .collect();
    let want = numbers.iter().fold(0u64, |a, &b| a.wrapping_add(b));
    let (conn, theirs) = Pipe::duplex().unwrap();
    let (reply_rx, reply_tx) = Pipe::<u32>::simplex().unwrap();
    let child = spawn!(sum_and_answer, theirs).unwrap();
    conn.send(&(numbers, reply_tx)).unwrap();
    assert_eq!(reply_rx.recv().unwrap(), 400_000);
    assert_eq!(child.join().unwrap(), want);
    // The child's copy of `reply_tx` is gone with it, and ours went in the message.
    assert!(matches!(reply_rx.recv(), Err(RecvError::Disconnected)));
}

#[process_entry]
fn send_huge_then_stall(conn: Connection<Vec<u8>>) {
    // Far more than the lane holds: the send waits for a reader, mid-message.
    let _ = conn.send_bytes(&vec![3u8; 64 << 20]);
}

#[test]
fn sender_killed_mid_large_message_is_an_error_then_broken() {
    let (conn, theirs) = Pipe::<Vec<u8>>::duplex().unwrap();
    // A copy of the child's end stays here, so the socket never says the
    // sender is gone: only the lane's record of its writer can.
    let spare = theirs.try_clone().unwrap();
    let child = spawn!(send_huge_then_stall, theirs).unwrap();
    // The announcing frame is on the socket: the child is inside its send.
    assert!(conn.poll(Duration::from_secs(60)));
    child.kill().unwrap();
    assert!(child.join().unwrap_err().is_signaled());
    let start = Instant::now();
    match conn.recv_bytes() {
        Err(RecvError::Failed(e)) => {
            assert!(e.is_disconnected(), "{e}");
            assert!(e.to_string().contains("middle of a message"), "{e}");
        }
        other => panic!("expected an error, got {:?}", other.map(|m| m.len())),
    }
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(matches!(conn.recv_bytes(), Err(RecvError::Failed(_))));
    drop(spare);
}

#[test]
fn a_sender_waiting_on_a_large_message_sees_its_receiver_die() {
    let (conn, theirs) = Pipe::<Vec<u8>>::duplex().unwrap();
    let (ready_r, ready_w) = pipe();
    let receiver = spawn!(hold_until_killed_bytes, theirs, Fd::from(ready_w)).unwrap();
    wait_byte(ready_r);
    std::thread::scope(|s| {
        let sending = s.spawn(|| conn.send_bytes(&vec![5u8; 32 << 20]));
        receiver.kill().unwrap();
        assert!(receiver.join().unwrap_err().is_signaled());
        let err = sending.join().unwrap().unwrap_err();
        assert!(err.is_disconnected(), "{err}");
    });
}

#[process_entry]
fn hold_until_killed_bytes(conn: Connection<Vec<u8>>, ready: Fd) {
    std::fs::File::from(ready.into_owned_fd()).write_all_byte();
    // Holds the end and never receives.
    let _conn = conn;
    loop {
        std::thread::park();
    }
}

#[process_entry]
fn receive_len(conn: Connection<Vec<u8>>) -> usize {
    conn.recv().unwrap().len()
}

#[test]
fn a_few_megabytes_can_be_sent_before_the_receiver_starts() {
    // As much as a socket's send buffer held before large messages took the
    // lane: sending it must not wait for a receiver.
    let (conn, theirs) = Pipe::<Vec<u8>>::duplex().unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let sender = std::thread::spawn(move || {
        conn.send(&vec![9u8; 3 << 20]).unwrap();
        done_tx.send(()).unwrap();
        conn
    });
    done_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("a 3 MiB send waited for a receiver");
    let child = spawn!(receive_len, theirs).unwrap();
    assert_eq!(child.join().unwrap(), 3 << 20);
    drop(sender.join().unwrap());
}

/// Sends `count` messages whose sizes straddle the lane's threshold, each
/// tagged with its sender and sequence number and filled from them.
#[process_entry]
fn send_mixed_sizes(tx: Connection<Vec<u8>>, sender: u8, count: u32) {
    for seq in 0..count {
        tx.send(&mixed_message(sender, seq)).unwrap();
    }
}

fn mixed_message(sender: u8, seq: u32) -> Vec<u8> {
    // 1 KiB to about 1.3 MiB, below and above 256 KiB in turn.
    let size = 1024 + (seq as usize * 97_003 + sender as usize * 31_337) % (1300 << 10);
    let mut msg = vec![sender ^ seq as u8; size];
    msg[..4].copy_from_slice(&seq.to_le_bytes());
    msg[4] = sender;
    msg
}

#[test]
fn processes_mixing_socket_and_lane_messages_keep_order_and_content() {
    let (rx, tx) = Pipe::<Vec<u8>>::simplex().unwrap();
    let senders: Vec<_> = (1..=3u8)
        .map(|sender| spawn!(send_mixed_sizes, tx.try_clone().unwrap(), sender, 40).unwrap())
        .collect();
    drop(tx);
    let mut next = [0u32; 4];
    for _ in 0..120 {
        let msg = rx.recv().unwrap();
        let seq = u32::from_le_bytes(msg[..4].try_into().unwrap());
        let sender = msg[4];
        assert_eq!(seq, next[sender as usize], "sender {sender} out of order");
        assert!(
            msg == mixed_message(sender, seq),
            "sender {sender} #{seq} corrupted"
        );
        next[sender as usize] += 1;
    }
    for sender in senders {
        sender.join().unwrap();
    }
    assert!(matches!(rx.recv(), Err(RecvError::Disconnected)));
}

#[process_entry]
fn send_huge_then_a_marker(tx: Connection<Vec<u8>>, release: multiproc::Event) -> bool {
    let sent = tx.send_bytes(&vec![9u8; 64 << 20]).is_ok();
    let _ = tx.send_bytes(b"end");
    release.wait();
    sent
}

#[process_entry]
fn start_reading(rx: Connection<Vec<u8>>) -> usize {
    rx.recv_bytes().map_or(0, |m| m.len())
}

/// Receives up to the marker: how many large messages came (each checked
/// whole), and whether the marker came (or the stream ended first).
#[process_entry]
fn read_to_the_marker(rx: Connection<Vec<u8>>) -> Result<(usize, bool), String> {
    let mut whole = 0;
    while let Ok(message) = rx.recv_bytes() {
        if message == b"end" {
            return Ok((whole, true));
        }
        if message.len() != 64 << 20 || message.iter().any(|&b| b != 9) {
            return Err(format!("a torn message of {} bytes", message.len()));
        }
        whole += 1;
    }
    Ok((whole, false))
}

/// The scheduler state of process `pid` (`R`, `S`, `T`, ...).
fn state_of(pid: u32) -> u8 {
    common::state_of(pid).expect("the process is gone")
}

fn signal(pid: u32, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
    rustix::process::kill_process(pid, signal).unwrap();
}

#[test]
fn a_large_message_that_lost_its_receiver_closes_the_stream_for_the_next() {
    use rustix::process::Signal;
    // The sender lives on after its message fails, holding its end: only
    // the stream's closing can tell the next receiver that the message it
    // would need is lost (and the sender's next message with it).
    let (rx, tx) = Pipe::<Vec<u8>>::simplex().unwrap();
    let release = multiproc::Event::new().unwrap();
    let sender = spawn!(send_huge_then_a_marker, tx, release.clone()).unwrap();
    // The message's frame is waiting (and its lane full): stop the sender
    // there, so that a receiver runs out of bytes in the middle of it.
    assert!(rx.poll(common::BOUND));
    signal(sender.pid(), Signal::STOP);
    let first = spawn!(start_reading, rx.try_clone().unwrap()).unwrap();
    // Once the frame is taken and the receiver sleeps, it is waiting inside
    // the message (nothing else puts it to sleep after taking the frame).
    let start = Instant::now();
    while rx.poll(Duration::ZERO) || state_of(first.pid()) != b'S' {
        assert!(start.elapsed() < common::BOUND, "never waits");
        std::thread::yield_now();
    }
    first.kill().unwrap();
    assert!(first.join().unwrap_err().is_signaled());
    signal(sender.pid(), Signal::CONT);
    let mut next = spawn!(read_to_the_marker, rx).unwrap();
    let left = next
        .join_timeout(common::BOUND)
        .unwrap()
        .expect("the next receiver was left waiting")
        .unwrap();
    release.set();
    assert!(!sender.join().unwrap(), "the sender's message went through");
    assert_eq!(left, (0, false), "the stream went on after a lost message");
}

#[process_entry]
fn send_until_blocked(tx: Connection<Vec<u8>>, started: multiproc::Event) {
    started.set();
    // Below the lane's threshold: through the socket, until its buffer is
    // full and a send waits with part of its message written.
    for i in 0u32.. {
        let _ = tx.send_bytes(&vec![i as u8; 200 << 10]);
    }
}

#[test]
fn a_sender_killed_mid_message_is_an_error_though_another_holds_the_end() {
    use rustix::process::Signal;
    let (rx, tx) = Pipe::<Vec<u8>>::simplex().unwrap();
    // Ours never sends, but keeps the stream from ending with the sender.
    let spare = tx.try_clone().unwrap();
    let started = multiproc::Event::new().unwrap();
    let sender = spawn!(send_until_blocked, tx, started.clone()).unwrap();
    assert!(started.wait_timeout(common::BOUND));
    // The sender sleeps only in a send that waits for room.
    let start = Instant::now();
    while state_of(sender.pid()) != b'S' {
        assert!(start.elapsed() < common::BOUND, "never blocks");
        std::thread::yield_now();
    }
    signal(sender.pid(), Signal::KILL);
    assert!(sender.join().unwrap_err().is_signaled());
    let (tx_result, results) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut whole = 0u32;
        let end = loop {
            match rx.recv_bytes() {
                Ok(message) => {
                    assert_eq!(message, vec![whole as u8; 200 << 10]);
                    whole += 1;
                }
                Err(e) => break e,
            }
        };
        let _ = tx_result.send((whole, end));
    });
    let (whole, end) = results
        .recv_timeout(common::BOUND)
        .expect("the receiver waits for the rest of the message for ever");
    assert!(whole >= 5, "only {whole} messages before the torn one");
    match end {
        RecvError::Failed(e) => {
            assert!(e.is_disconnected(), "{e}");
            assert!(e.to_string().contains("died in the middle"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    drop(spare);
}

#[process_entry]
fn reply_when_asked(conn: Connection<u32>) {
    if let Ok(n) = conn.recv() {
        conn.send(&(n + 1)).unwrap();
    }
}

#[test]
fn wait_sees_a_message_already_read_ahead() {
    let (a, b) = Pipe::<u32>::duplex().unwrap();
    b.send(&1).unwrap();
    b.send(&2).unwrap();
    assert_eq!(a.recv().unwrap(), 1);
    // The second message came in with the first: the socket itself has
    // nothing more to say, yet `recv` would return at once.
    let mut fds = [rustix::event::PollFd::new(&a, rustix::event::PollFlags::IN)];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    assert_eq!(rustix::event::poll(&mut fds, Some(&zero)).unwrap(), 0);
    assert_eq!(multiproc::wait(&[&a], Some(Duration::ZERO)).unwrap(), [0]);
    assert_eq!(a.recv().unwrap(), 2);
    assert!(
        multiproc::wait(&[&a], Some(Duration::from_millis(20)))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn wait_returns_the_connections_and_processes_that_are_ready() {
    let (quiet, _quiet_peer) = Pipe::<u32>::duplex().unwrap();
    let (ours, theirs) = Pipe::<u32>::duplex().unwrap();
    let child = spawn!(reply_when_asked, theirs).unwrap();
    assert!(
        multiproc::wait(&[&quiet, &ours, &child], Some(Duration::from_millis(20)))
            .unwrap()
            .is_empty()
    );
    ours.send(&41).unwrap();
    // The reply first (or with the child's end, if it has exited by then).
    let ready = multiproc::wait(&[&quiet, &ours], Some(common::BOUND)).unwrap();
    assert_eq!(ready, [1]);
    assert_eq!(ours.recv().unwrap(), 42);
    let ready = multiproc::wait(&[&quiet, &child], Some(common::BOUND)).unwrap();
    assert_eq!(ready, [1], "the child has ended");
    child.join().unwrap();
    // A gone peer is ready too: `recv` reports it at once.
    drop(_quiet_peer);
    assert_eq!(
        multiproc::wait(&[&quiet], Some(common::BOUND)).unwrap(),
        [0]
    );
    assert!(matches!(quiet.recv(), Err(RecvError::Disconnected)));
}

#[process_entry]
fn return_at_once() {}

#[test]
fn wait_returns_every_ready_object_not_only_the_first_it_sees() {
    let (quiet, _quiet_peer) = Pipe::<u32>::duplex().unwrap();
    let (talks, peer) = Pipe::<u32>::duplex().unwrap();
    let child = spawn!(return_at_once).unwrap();
    assert_eq!(
        multiproc::wait(&[&child], Some(common::BOUND)).unwrap(),
        [0]
    );
    peer.send(&1).unwrap();
    assert!(talks.poll(common::BOUND), "the message is in the socket");
    // An ended process and a connection with a message are both ready now:
    // Python's `wait` lists them all.
    assert_eq!(
        multiproc::wait(&[&talks, &quiet, &child], Some(Duration::ZERO)).unwrap(),
        [0, 2]
    );
    assert_eq!(talks.recv().unwrap(), 1);
    child.join().unwrap();
}

#[test]
fn recv_timeout_bounds_a_message_that_stops_half_way_and_loses_nothing() {
    let (a, b) = Pipe::<Vec<u8>>::duplex().unwrap();
    // Raw bytes, 100 announced, 50 sent: the sender stalls half-way.
    let frame = encode_frame_for_tests(6, 100, &[7; 100]);
    write_raw(&b, &frame[..frame.len() - 50]);
    let start = Instant::now();
    assert!(matches!(
        a.recv_timeout(Duration::from_millis(100)),
        Err(RecvTimeoutError::Timeout)
    ));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert!(
        matches!(a.try_recv(), Err(TryRecvError::Empty)),
        "try_recv waited"
    );
    // The rest comes: the message is whole, nothing lost or broken.
    write_raw(&b, &frame[frame.len() - 50..]);
    assert_eq!(a.recv_timeout(common::BOUND).unwrap(), vec![7; 100]);
    b.send(&vec![1, 2, 3]).unwrap();
    assert_eq!(a.recv().unwrap(), [1, 2, 3]);
}

#[process_entry]
fn send_big(conn: Connection<Vec<u8>>, len: usize) {
    let message: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    conn.send(&message).unwrap();
}

/// Waits until `sender` has filled the lane of a large message to `ours`
/// and sleeps until it is read, then stops it (SIGSTOP): a receive then
/// takes part of the message and no more.
fn stop_once_the_lane_is_full(ours: &Connection<Vec<u8>>, sender: u32) {
    common::eventually("the sender fills the lane", || {
        ours.poll(Duration::ZERO) && common::state_of(sender) == Some(b'S')
    });
    signal(sender, rustix::process::Signal::STOP);
    common::eventually("the sender is stopped", || {
        common::state_of(sender) == Some(b'T')
    });
}

#[test]
fn recv_timeout_bounds_a_large_message_whose_sender_stops() {
    use rustix::process::Signal;
    const LEN: usize = 16 << 20;
    let (ours, theirs) = Pipe::<Vec<u8>>::duplex().unwrap();
    let sender = spawn!(send_big, theirs, LEN).unwrap();
    // The sender fills the lane (4 MiB) and sleeps until we read; stopped,
    // it cannot go on when we do.
    stop_once_the_lane_is_full(&ours, sender.pid());
    let start = Instant::now();
    let first = ours.recv_timeout(Duration::from_millis(200));
    signal(sender.pid(), Signal::CONT);
    assert!(matches!(first, Err(RecvTimeoutError::Timeout)), "{first:?}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    let got = ours.recv_timeout(common::BOUND).unwrap();
    assert_eq!(got.len(), LEN);
    assert!(got.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
    sender.join().unwrap();
}

#[test]
fn a_connection_half_way_through_a_large_message_refuses_to_travel() {
    use rustix::process::Signal;
    const LEN: usize = 16 << 20;
    let (ours, theirs) = Pipe::<Vec<u8>>::duplex().unwrap();
    let sender = spawn!(send_big, theirs, LEN).unwrap();
    // As above: the sender fills the lane and is stopped, so a receive
    // with a deadline takes part of the message and keeps it.
    stop_once_the_lane_is_full(&ours, sender.pid());
    let first = ours.recv_timeout(Duration::from_millis(200));
    // The first part of the message is ours: a copy of the end sent away
    // would go on where the rest of it is, and the message be torn.
    let (carrier, _other) = Pipe::<Connection<Vec<u8>>>::duplex().unwrap();
    let sent = carrier.send(&ours);
    signal(sender.pid(), Signal::CONT);
    assert!(matches!(first, Err(RecvTimeoutError::Timeout)), "{first:?}");
    let err = sent.expect_err("a connection half-way through a message travelled");
    assert!(err.to_string().contains("not yet read"), "{err}");
    let got = ours.recv_timeout(common::BOUND).unwrap();
    assert_eq!(got.len(), LEN);
    sender.join().unwrap();
}

#[process_entry]
fn send_big_or_fail(conn: Connection<Vec<u8>>, len: usize) -> Result<(), String> {
    conn.send(&vec![3u8; len]).map_err(|e| e.to_string())
}

#[process_entry]
fn take_part_then_wait(conn: Connection<Vec<u8>>, took: multiproc::Event) -> bool {
    let timed_out = matches!(
        conn.recv_timeout(Duration::from_millis(200)),
        Err(RecvTimeoutError::Timeout)
    );
    took.set();
    loop {
        std::thread::park();
        let _ = (&conn, timed_out);
    }
}

#[test]
fn a_receiver_killed_after_a_deadline_passed_mid_message_is_seen_by_the_sender() {
    use rustix::process::Signal;
    const LEN: usize = 16 << 20;
    let (ours, theirs) = Pipe::<Vec<u8>>::duplex().unwrap();
    let sender = spawn!(send_big_or_fail, theirs, LEN).unwrap();
    stop_once_the_lane_is_full(&ours, sender.pid());
    // Another process takes the first part of the message, its deadline
    // passes, and it is killed; we keep our copy of the receiving end.
    let took = multiproc::Event::new().unwrap();
    let receiver = spawn!(take_part_then_wait, ours.try_clone().unwrap(), took.clone()).unwrap();
    assert!(took.wait_timeout(common::BOUND));
    receiver.kill().unwrap();
    assert!(receiver.join().unwrap_err().is_signaled());
    signal(sender.pid(), Signal::CONT);
    // The rest of the message can no longer be delivered whole: the sender
    // fails and the stream ends, rather than both waiting for ever.
    match ours.recv_timeout(common::BOUND) {
        Err(RecvTimeoutError::Disconnected) => {}
        other => panic!("expected the stream to end, got {other:?}"),
    }
    let sent = sender.join().unwrap();
    assert!(sent.is_err(), "{sent:?}");
}

fn handles(n: usize) -> Vec<Fd> {
    let (r, _w) = rustix::pipe::pipe().unwrap();
    (0..n).map(|_| Fd::from(r.try_clone().unwrap())).collect()
}

#[test]
fn the_handle_limit_leaves_room_for_the_transports_own_descriptor() {
    // 252 handles and a message large enough for the lane (one more
    // descriptor) go through; 253 are refused with a clear error.
    let (a, b) = Pipe::<(Vec<Fd>, Vec<u8>)>::duplex().unwrap();
    a.send(&(handles(252), vec![7; 512 << 10])).unwrap();
    let (fds, bytes) = b.recv().unwrap();
    assert_eq!((fds.len(), bytes.len()), (252, 512 << 10));
    drop(fds);
    let err = a.send(&(handles(253), Vec::new())).unwrap_err();
    assert!(
        err.to_string().contains(
            "too many handles in one message (max 252): the limit counts descriptors, \
             and its handles hold 253"
        ),
        "{err}"
    );
}

#[test]
fn the_limit_is_told_in_descriptors_which_a_queue_holds_three_of() {
    // 100 queues are 300 descriptors: the error must not call them 300
    // handles.
    let queues: Vec<Queue<u8>> = (0..100).map(|_| Queue::new().unwrap()).collect();
    let (a, _b) = Pipe::<Vec<Queue<u8>>>::duplex().unwrap();
    let err = a.send(&queues).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("the limit counts descriptors"), "{text}");
    assert!(text.contains("hold 300"), "{text}");
    assert!(text.contains("a Queue three"), "{text}");
}

#[process_entry]
fn return_handles_and_bytes(n: usize) -> (Vec<Fd>, Vec<u8>) {
    // Over 64 KiB: the result is spilled to a memfd, one descriptor more.
    (handles(n), vec![1; 100 << 10])
}

#[test]
fn a_result_with_the_most_handles_and_a_spill_comes_back() {
    let (fds, bytes) = spawn!(return_handles_and_bytes, 252)
        .unwrap()
        .join()
        .unwrap();
    assert_eq!((fds.len(), bytes.len()), (252, 100 << 10));
    let err = spawn!(return_handles_and_bytes, 253)
        .unwrap()
        .join()
        .unwrap_err();
    assert!(err.to_string().contains("too many handles"), "{err}");
}
