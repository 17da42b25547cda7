//! Counts the primes below two million in chunks over a [`Pool`], shows the
//! speed-up over doing it in this one process, and draws a progress bar
//! from `imap_unordered` as the chunks come back.
//!
//! `cargo run --release --example pool`; `tour` runs it too.

use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use multiproc::{Pool, entry, process_entry};

use super::Summary;

const LIMIT: u64 = 2_000_000;
const CHUNK: u64 = 25_000;

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// How many primes in `[start, end)`.
#[process_entry]
fn count_primes(range: (u64, u64)) -> u64 {
    (range.0..range.1).filter(|&n| is_prime(n)).count() as u64
}

/// Runs the program; returns a one-line summary (for the tour).
pub fn run() -> multiproc::Result<Summary> {
    let chunks: Vec<(u64, u64)> = (0..LIMIT)
        .step_by(CHUNK as usize)
        .map(|start| (start, (start + CHUNK).min(LIMIT)))
        .collect();

    let start = Instant::now();
    let alone: u64 = chunks.iter().map(|&range| count_primes(range)).sum();
    let one_process = start.elapsed();
    println!("one process:   {alone} primes below {LIMIT} in {one_process:.2?}");

    let workers = multiproc::cpu_count();
    let pool = Pool::new(workers)?;
    let bar = ProgressBar::new(chunks.len() as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} chunks")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let start = Instant::now();
    let mut total = 0;
    for count in pool.imap_unordered(entry!(count_primes), chunks)? {
        total += count?;
        bar.inc(1);
    }
    let pooled = start.elapsed();
    bar.finish_and_clear();
    pool.close();
    pool.join()?;
    if total != alone {
        return Err(std::io::Error::other(format!(
            "the pool counted {total} primes, one process {alone}"
        ))
        .into());
    }

    let speedup = one_process.as_secs_f64() / pooled.as_secs_f64();
    println!("Pool({workers}):       {total} primes below {LIMIT} in {pooled:.2?}");
    println!("speed-up:      {speedup:.2}x with {workers} workers");
    Ok(Summary {
        detail: format!(
            "{total} primes below {LIMIT}; Pool({workers}) {speedup:.2}x faster than one process"
        ),
    })
}
