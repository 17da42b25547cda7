//! Spawn + join of a trivial entry, against the floor: a bare `Command` exec
//! of this same binary that exits before `main`. Both again with a parent
//! holding 1 GiB of touched heap, which shows whether the posix_spawn (vfork)
//! path is kept: a fork would have to copy the page tables of that heap.
//!
//! `cargo bench --bench spawn`; procspawn is measured in the same run by
//! `benches/peers` (`cd benches/peers && cargo bench`), Python by
//! `benches/python/spawn.py`.

use std::hint::black_box;
use std::process::{Command, Stdio};

use criterion::{Criterion, criterion_group, criterion_main};
use multiproc::{process_entry, spawn};

#[process_entry]
fn trivial(x: u32) -> u32 {
    x + 1
}

/// Execs this binary so that it exits at once: the bootstrap marker is
/// malformed, so the child's load-time check exits before `main`.
fn bare_exec() {
    let status = Command::new("/proc/self/exe")
        .env("__MULTIPROC_BOOTSTRAP_V1", "floor")
        .stdin(Stdio::null())
        .status()
        .expect("exec");
    black_box(status);
}

fn spawn_join() {
    let value = spawn!(trivial, 1).expect("spawn").join().expect("join");
    black_box(value);
}

fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("spawn");
    group.bench_function("floor: bare exec of this binary", |b| b.iter(bare_exec));
    group.bench_function("multiproc: spawn!+join", |b| b.iter(spawn_join));
    group.finish();

    let heap = vec![1u8; 1 << 30];
    black_box(&heap);
    let mut group = c.benchmark_group("spawn with 1 GiB heap");
    group.bench_function("floor: bare exec of this binary", |b| b.iter(bare_exec));
    group.bench_function("multiproc: spawn!+join", |b| b.iter(spawn_join));
    group.finish();
    drop(heap);
}

criterion_group! {
    name = spawn_benches;
    config = Criterion::default().sample_size(50);
    targets = benches
}
criterion_main!(spawn_benches);
