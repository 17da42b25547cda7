//! Seed program 4: five children mutate a Manager dict and list; the parent prints both.

mod seeds;

fn main() -> multiproc::Result<()> {
    seeds::manager::run().map(drop)
}
