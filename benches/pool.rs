//! Pool: per-task overhead of a trivial entry (chunk size 1, and Python's
//! default chunk size), against the floor of one `Connection` message each
//! way through one child; and a CPU-bound `map` (tasks of about 1 ms) over
//! 2 workers, against rayon on 2 threads.
//!
//! `cargo bench -p multiproc-benches --bench pool`; Python's `Pool` on the same workloads:
//! `python3 benches/python/pool.py`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use multiproc::{Connection, Pipe, Pool, Queue, entry, process_entry, spawn};
use rayon::prelude::*;

mod tasks;
use tasks::{spin, trivial};

#[process_entry]
fn echo(conn: Connection<u64>) {
    while let Ok(x) = conn.recv() {
        if conn.send(&(x + 1)).is_err() {
            return;
        }
    }
}

#[process_entry]
fn queue_echo(tasks: Queue<u64>, results: Queue<u64>) {
    while let Ok(x) = tasks.get() {
        if results.put(x + 1).is_err() {
            return;
        }
    }
}

/// The iterations that make `spin` take about `target`.
fn calibrate(target: Duration) -> u64 {
    let mut iters = 10_000u64;
    loop {
        let start = Instant::now();
        black_box(spin(iters));
        let took = start.elapsed();
        if took > Duration::from_millis(20) {
            return (iters as f64 * target.as_secs_f64() / took.as_secs_f64()) as u64;
        }
        iters *= 2;
    }
}

const TRIVIAL_TASKS: u64 = 20_000;
const CPU_TASKS: usize = 100;

fn overhead(c: &mut Criterion) {
    let mut group = c.benchmark_group("pool per-task overhead");
    group.throughput(Throughput::Elements(TRIVIAL_TASKS));
    group.sample_size(20);

    // Floor: one message each way per task, streamed through one child.
    let (conn, theirs) = Pipe::<u64>::duplex().unwrap();
    let child = spawn!(echo, theirs).unwrap();
    let sender = conn.try_clone().unwrap();
    group.bench_function("floor: Connection echo, 1 child", |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                s.spawn(|| {
                    for x in 0..TRIVIAL_TASKS {
                        sender.send(&x).unwrap();
                    }
                });
                let mut sum = 0;
                for _ in 0..TRIVIAL_TASKS {
                    sum += conn.recv().unwrap();
                }
                black_box(sum);
            })
        })
    });
    drop((sender, conn));
    child.join().unwrap();

    // The other transport the pool could use: a shared-memory Queue each
    // way (no notice of a dead worker, though: see the pool's docs).
    let (tasks, results) = (Queue::new().unwrap(), Queue::new().unwrap());
    let child = spawn!(queue_echo, tasks.clone(), results.clone()).unwrap();
    group.bench_function("floor: Queue echo, 1 child", |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                s.spawn(|| {
                    for x in 0..TRIVIAL_TASKS {
                        tasks.put(x).unwrap();
                    }
                });
                let mut sum = 0;
                for _ in 0..TRIVIAL_TASKS {
                    sum += results.get().unwrap();
                }
                black_box(sum);
            })
        })
    });
    tasks.shutdown();
    drop(tasks);
    child.kill().unwrap();
    let _ = child.join();

    let pool = Pool::new(2).unwrap();
    group.bench_function(
        BenchmarkId::new("multiproc Pool(2).map", "chunksize 1"),
        |b| {
            b.iter(|| {
                black_box(
                    pool.map_chunked(entry!(trivial), 0..TRIVIAL_TASKS, 1)
                        .unwrap(),
                )
            })
        },
    );
    group.bench_function(
        BenchmarkId::new("multiproc Pool(2).map", "default chunksize"),
        |b| b.iter(|| black_box(pool.map(entry!(trivial), 0..TRIVIAL_TASKS).unwrap())),
    );
    group.bench_function(
        BenchmarkId::new("multiproc Pool(2).imap", "chunksize 1"),
        |b| {
            b.iter(|| {
                let sum: u64 = pool
                    .imap(entry!(trivial), 0..TRIVIAL_TASKS)
                    .unwrap()
                    .map(Result::unwrap)
                    .sum();
                black_box(sum)
            })
        },
    );
    group.finish();
}

fn cpu_bound(c: &mut Criterion) {
    let iters = calibrate(Duration::from_millis(1));
    let mut group = c.benchmark_group("CPU-bound map, 100 tasks of ~1 ms, 2 workers");
    group.throughput(Throughput::Elements(CPU_TASKS as u64));
    group.sample_size(10);

    let threads = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    group.bench_function("baseline: rayon, 2 threads", |b| {
        b.iter(|| {
            let out: Vec<u64> = threads.install(|| {
                (0..CPU_TASKS)
                    .into_par_iter()
                    .map(|_| spin(black_box(iters)))
                    .collect()
            });
            black_box(out)
        })
    });
    let pool = Pool::new(2).unwrap();
    group.bench_function("multiproc Pool(2).map, default chunksize", |b| {
        b.iter(|| black_box(pool.map(entry!(spin), vec![iters; CPU_TASKS]).unwrap()))
    });
    group.bench_function("multiproc Pool(2).map, chunksize 1", |b| {
        b.iter(|| {
            black_box(
                pool.map_chunked(entry!(spin), vec![iters; CPU_TASKS], 1)
                    .unwrap(),
            )
        })
    });
    group.finish();
}

/// The same CPU-bound comparison, paired: rayon and the pool run in turn,
/// round after round, and the median of the per-round ratios is printed.
/// On a machine shared with other work, load that comes and goes moves
/// criterion's separate groups apart; within a round it hits both alike.
fn cpu_bound_paired(_: &mut Criterion) {
    const ROUNDS: usize = 21;
    if !paired_wanted() {
        return;
    }
    let iters = calibrate(Duration::from_millis(1));
    let threads = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let pool = Pool::new(2).unwrap();
    let time = |f: &dyn Fn()| {
        let start = Instant::now();
        f();
        start.elapsed().as_secs_f64()
    };
    let rayon_run = || {
        let out: Vec<u64> = threads.install(|| {
            (0..CPU_TASKS)
                .into_par_iter()
                .map(|_| spin(black_box(iters)))
                .collect()
        });
        black_box(out);
    };
    let mut default_ratios = Vec::new();
    let mut single_ratios = Vec::new();
    for _ in 0..ROUNDS {
        let rayon = time(&rayon_run);
        let default = time(&|| {
            black_box(pool.map(entry!(spin), vec![iters; CPU_TASKS]).unwrap());
        });
        let single = time(&|| {
            black_box(
                pool.map_chunked(entry!(spin), vec![iters; CPU_TASKS], 1)
                    .unwrap(),
            );
        });
        default_ratios.push(rayon / default);
        single_ratios.push(rayon / single);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "CPU-bound map, paired over {ROUNDS} rounds: Pool(2) throughput / rayon's, median: \
         default chunksize {:.2}x, chunksize 1 {:.2}x",
        median(&mut default_ratios),
        median(&mut single_ratios)
    );
}

/// Criterion's filters do not reach a measurement of one's own: run it
/// under `cargo bench` with no filter, or one that names `CPU` or `paired`
/// (not under `cargo test --benches`, nor `--profile-time`).
fn paired_wanted() -> bool {
    const WITH_VALUE: &[&str] = &[
        "--warm-up-time",
        "--measurement-time",
        "--sample-size",
        "--save-baseline",
        "--baseline",
        "--load-baseline",
        "--color",
        "--output-format",
        "--format",
        "--plotting-backend",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--nresamples",
    ];
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") || args.iter().any(|a| a == "--profile-time") {
        return false;
    }
    let mut filters = Vec::new();
    let mut value_next = false;
    for arg in &args {
        if std::mem::take(&mut value_next) {
            continue;
        }
        if arg.starts_with('-') {
            value_next = WITH_VALUE.contains(&arg.as_str());
        } else {
            filters.push(arg.as_str());
        }
    }
    filters.is_empty()
        || filters
            .iter()
            .any(|f| f.contains("CPU") || f.contains("paired"))
}

criterion_group!(pool_benches, overhead, cpu_bound, cpu_bound_paired);
criterion_main!(pool_benches);
