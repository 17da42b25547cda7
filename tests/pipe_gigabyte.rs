//! A 1 GiB message arrives whole. Its own test binary, so its 2 GiB of
//! buffers are not allocated while other tests run.

use multiproc::{Connection, Pipe, process_entry, spawn};

#[process_entry]
fn echo_checksum(conn: Connection<Vec<u8>>) -> (usize, u64) {
    let msg = conn.recv_bytes().unwrap();
    let sum = msg.iter().step_by(4096).map(|&b| b as u64).sum();
    (msg.len(), sum)
}

#[test]
fn a_one_gibibyte_message_arrives_whole() {
    const LEN: usize = 1 << 30;
    let (conn, theirs) = Pipe::<Vec<u8>>::duplex().unwrap();
    let child = spawn!(echo_checksum, theirs).unwrap();
    let mut msg = vec![7u8; LEN];
    for (i, page) in msg.chunks_mut(4096).enumerate() {
        page[0] = i as u8;
    }
    let want: u64 = msg.iter().step_by(4096).map(|&b| b as u64).sum();
    conn.send_bytes(&msg).unwrap();
    drop(msg);
    assert_eq!(child.join().unwrap(), (LEN, want));
}
