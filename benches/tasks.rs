//! Entries the pool benchmarks share (`mod tasks;` in each).

use std::hint::black_box;

use multiproc::process_entry;

/// The least a task can be: one addition.
#[process_entry]
pub fn trivial(x: u64) -> u64 {
    x + 1
}

/// About `iters` steps of a xorshift: CPU only, no memory traffic.
#[process_entry]
pub fn spin(iters: u64) -> u64 {
    let mut x = black_box(0x9e37_79b9_7f4a_7c15u64);
    for _ in 0..iters {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    x
}
