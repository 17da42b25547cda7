//! Seed program 2: three children put `[n, 'hello']` on one queue; the parent prints them.

mod seeds;

fn main() -> multiproc::Result<()> {
    seeds::queue::run().map(drop)
}
