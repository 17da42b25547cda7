//! Seed program 3: a child sends `[42, None, 'hello']` through a pipe.

mod seeds;

fn main() -> multiproc::Result<()> {
    seeds::pipe::run().map(drop)
}
