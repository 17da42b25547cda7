//! Runs every seed program, then prints a short summary.
//!
//! `cargo run --release --example tour`

mod seeds;

fn main() {
    std::process::exit(seeds::tour());
}
