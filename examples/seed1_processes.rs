//! Seed program 1: start three processes, each prints `hello AAA`, then `done`.

mod seeds;

fn main() -> multiproc::Result<()> {
    seeds::processes::run().map(drop)
}
