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

/// Execs this binary so that it stops before `main` as a child does, but
/// with nothing to run: a genuine marker (this process as the parent, the
/// `trivial` entry) and a control socket whose other end is already
/// closed, so the child's load-time bootstrap finds no call and exits.
/// That is the exec, the loading and the bootstrap's checks: the floor
/// under any spawn.
fn bare_exec() {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    drop(ours);
    let marker = format!(
        "{}:0:{}:{}",
        std::process::id(),
        multiproc::entries().len(),
        entry_name(multiproc::entry!(trivial))
    );
    let status = Command::new("/proc/self/exe")
        .env("__MULTIPROC_BOOTSTRAP_V1", marker)
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .status()
        .expect("exec");
    black_box(status);
}

fn entry_name<E: multiproc::Entry>(_: E) -> &'static str {
    E::NAME
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
