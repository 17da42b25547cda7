//! A crate that forbids `unsafe` can still declare and spawn entries.
#![forbid(unsafe_code)]

use multiproc::{process_entry, spawn};

#[process_entry]
fn safe_work(x: u8) -> u8 {
    x.wrapping_mul(3)
}

#[test]
fn entries_work_under_forbid_unsafe_code() {
    assert_eq!(spawn!(safe_work, 5).unwrap().join().unwrap(), 15);
}
