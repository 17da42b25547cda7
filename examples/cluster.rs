//! A pool whose workers run on a Slurm cluster's nodes.
//!
//! ```sh
//! # inside an allocation (the pool uses its nodes and tasks):
//! salloc -N4 --ntasks-per-node=2 cargo run --release --example cluster
//! # or asking for one (4 nodes, 2 workers each):
//! cargo run --release --example cluster -- 4 2
//! ```
//!
//! Every node must be able to run this binary (a shared filesystem, or add
//! `.broadcast("/tmp/")`) and to reach this host over TCP.

use std::collections::BTreeMap;
use std::time::Instant;

use multiproc::cluster::Slurm;
use multiproc::{Pool, entry, process_entry};

/// Counts the primes in `[lo, hi)` by trial division (CPU-bound on purpose),
/// and says where it ran.
#[process_entry]
fn primes_in(range: (u64, u64)) -> (u64, String) {
    let (lo, hi) = range;
    let count = (lo..hi)
        .filter(|&n| n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0))
        .count() as u64;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    (count, host.trim().to_string())
}

fn main() -> multiproc::Result<()> {
    let args: Vec<u32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let mut slurm = Slurm::new();
    match args.as_slice() {
        [nodes, per_node, ..] => slurm = slurm.nodes(*nodes).tasks_per_node(*per_node),
        [nodes] => slurm = slurm.nodes(*nodes),
        [] if std::env::var_os("SLURM_JOB_ID").is_none() => slurm = slurm.nodes(2),
        [] => {}
    }
    let started = Instant::now();
    let pool = Pool::builder().launcher(slurm).build()?;
    println!(
        "{} workers connected back in {:.2?}",
        pool.processes(),
        started.elapsed()
    );

    let ranges: Vec<(u64, u64)> = (0..200u64)
        .map(|i| (i * 10_000, (i + 1) * 10_000))
        .collect();
    let started = Instant::now();
    let results = pool.map_chunked(entry!(primes_in), ranges, 1)?;
    let total: u64 = results.iter().map(|(n, _)| n).sum();
    let mut per_host = BTreeMap::<&str, usize>::new();
    for (_, host) in &results {
        *per_host.entry(host.as_str()).or_default() += 1;
    }
    println!(
        "{total} primes below 2,000,000 in {:.2?}; tasks per node: {per_host:?}",
        started.elapsed()
    );
    assert_eq!(total, 148_933);
    pool.close();
    pool.join()
}
