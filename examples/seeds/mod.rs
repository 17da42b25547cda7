//! The seed programs (../shared/seed-examples.md) and the Pool example,
//! shared by their own examples, by `tour` and by `tests/examples.rs`.

pub mod manager;
pub mod pipe;
pub mod pool;
pub mod processes;
pub mod queue;

/// What a seed program reports for the tour's summary.
// Single-seed examples only run the program; `tour` reads the summary.
#[allow(dead_code)]
#[derive(Debug)]
pub struct Summary {
    pub detail: String,
}

type Seed = fn() -> multiproc::Result<Summary>;

/// Every seed program, in order.
pub const ALL: &[(&str, Seed)] = &[
    ("seed 1: three processes", processes::run),
    ("seed 2: a queue shared by three children", queue::run),
    ("seed 3: a pipe", pipe::run),
    ("seed 4: a manager dict and list", manager::run),
    ("pool: primes counted over a Pool", pool::run),
];

/// Runs every seed, prints a summary; returns the exit code.
#[allow(dead_code)]
pub fn tour() -> i32 {
    let mut results = Vec::new();
    for (name, run) in ALL {
        println!("=== {name}");
        let start = std::time::Instant::now();
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
        "{} programs ran, {} failed (multiproc {}, {} CPUs)",
        results.len(),
        failed,
        env!("CARGO_PKG_VERSION"),
        multiproc::cpu_count()
    );
    i32::from(failed > 0)
}
