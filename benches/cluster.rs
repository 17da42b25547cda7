//! The pool on the emulated Slurm cluster (`ci/slurm/`, 4 nodes with their
//! own network namespaces, all on this machine's cores) against the local
//! pool with the same number of workers, in the same run: per-task overhead
//! of a trivial entry (chunk size 1: one TCP round trip per task, against
//! a Unix socket) and a CPU-bound map.
//!
//! ```sh
//! SLURM_NETNS=1 bash ci/slurm/with-slurm.sh 4 -- cargo bench -p multiproc-benches --bench cluster
//! ```
//!
//! Without a cluster (no `SLURM_CONF`) it says so and measures nothing.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use multiproc::cluster::Slurm;
use multiproc::{Pool, entry};

mod tasks;
use tasks::{spin, trivial};

const WORKERS: u32 = 4;
const TRIVIAL_TASKS: u64 = 5_000;
const CPU_TASKS: usize = 64;
/// A few milliseconds of `spin` on this machine kind.
const SPIN: u64 = 4_000_000;

fn pools() -> Option<(Pool, Pool)> {
    if std::env::var_os("SLURM_CONF").is_none() {
        eprintln!("skipped: no Slurm cluster (run under ci/slurm/with-slurm.sh)");
        return None;
    }
    let local = Pool::new(WORKERS as usize).unwrap();
    let cluster = Pool::builder()
        .launcher(
            Slurm::new()
                .nodes(WORKERS)
                .tasks_per_node(1)
                .immediate(Duration::from_secs(10)),
        )
        .build()
        .unwrap();
    Some((local, cluster))
}

fn cluster(c: &mut Criterion) {
    let Some((local, cluster)) = pools() else {
        return;
    };
    let mut group = c.benchmark_group("pool per-task overhead, 4 workers");
    group.throughput(Throughput::Elements(TRIVIAL_TASKS));
    group.sample_size(10);
    for (name, pool) in [("local Pool(4)", &local), ("Slurm 4 nodes x 1", &cluster)] {
        group.bench_function(format!("{name}.map, chunksize 1"), |b| {
            b.iter(|| {
                black_box(
                    pool.map_chunked(entry!(trivial), 0..TRIVIAL_TASKS, 1)
                        .unwrap(),
                )
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("CPU-bound map, 64 tasks of a few ms, 4 workers");
    group.throughput(Throughput::Elements(CPU_TASKS as u64));
    group.sample_size(10);
    for (name, pool) in [("local Pool(4)", &local), ("Slurm 4 nodes x 1", &cluster)] {
        group.bench_function(format!("{name}.map, chunksize 1"), |b| {
            b.iter(|| {
                black_box(
                    pool.map_chunked(entry!(spin), vec![SPIN; CPU_TASKS], 1)
                        .unwrap(),
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, cluster);
criterion_main!(benches);
