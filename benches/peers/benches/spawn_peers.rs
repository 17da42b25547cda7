//! multiproc vs procspawn vs the floor (a bare exec of this binary that exits
//! before `main`), all in one run: spawn a trivial function, join its result.

use std::hint::black_box;
use std::process::{Command, Stdio};

use criterion::Criterion;
use multiproc::{process_entry, spawn};

#[process_entry]
fn trivial(x: u32) -> u32 {
    x + 1
}

fn bare_exec() {
    let status = Command::new("/proc/self/exe")
        .env("__MULTIPROC_BOOTSTRAP_V1", "floor")
        .stdin(Stdio::null())
        .status()
        .expect("exec");
    black_box(status);
}

fn main() {
    // procspawn needs this first thing in main; multiproc needs nothing.
    procspawn::init();
    let mut c = Criterion::default().sample_size(50).configure_from_args();
    let mut group = c.benchmark_group("spawn peers");
    group.bench_function("floor: bare exec of this binary", |b| b.iter(bare_exec));
    group.bench_function("multiproc: spawn!+join", |b| {
        b.iter(|| black_box(spawn!(trivial, 1).expect("spawn").join().expect("join")))
    });
    group.bench_function("procspawn: spawn+join", |b| {
        b.iter(|| {
            let handle = procspawn::spawn(1u32, |x| x + 1);
            black_box(handle.join().expect("join"))
        })
    });
    group.finish();
    c.final_summary();
}
