//! Counts the primes below two million in chunks over a `Pool`, shows the
//! speed-up over one process, with a progress bar driven by
//! `imap_unordered` (the program is in `seeds/pool.rs`, which `tour` runs).
//!
//! `cargo run --release --example pool`

mod seeds;

fn main() -> multiproc::Result<()> {
    seeds::pool::run().map(drop)
}
