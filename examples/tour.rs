//! Runs every seed program, then prints a short summary.
//!
//! `cargo run --release --example tour`

mod seeds;

use std::time::Instant;

type Seed = fn() -> multiproc::Result<seeds::Summary>;

fn main() {
    let all: &[(&str, Seed)] = &[("seed 1: three processes", seeds::processes::run)];
    let mut results = Vec::new();
    for (name, run) in all {
        println!("=== {name}");
        let start = Instant::now();
        let result = run();
        results.push((*name, result, start.elapsed()));
        println!();
    }
    println!("=== summary");
    let mut failed = 0;
    for (name, result, elapsed) in &results {
        match result {
            Ok(summary) => println!("ok    {name} — {} ({elapsed:.1?})", summary.detail),
            Err(err) => {
                failed += 1;
                println!("FAIL  {name} — {err}");
            }
        }
    }
    println!(
        "{} passed, {} failed (multiproc {}, {} CPUs)",
        results.len() - failed,
        failed,
        env!("CARGO_PKG_VERSION"),
        multiproc::cpu_count()
    );
    if failed > 0 {
        std::process::exit(1);
    }
}
