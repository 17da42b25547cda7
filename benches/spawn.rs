//! Spawn + join of a trivial entry, against the floor: a bare `Command` exec
//! of this same binary that exits before `main`. Both again with a parent
//! holding 1 GiB of touched heap, which shows whether the posix_spawn (vfork)
//! path is kept: a fork would have to copy the page tables of that heap.
//!
//! `StartMethod::ForkServer` is measured beside them: the child is forked
//! from a server that holds none of the parent's heap, so its cost must not
//! grow with the parent either. Before the timings, the private memory a
//! child adds (`Private_Dirty` and `Private_Clean` of its
//! `/proc/self/smaps_rollup`, read by the child inside its entry) is printed
//! for a re-executed and a forked child, and so are the min, median and mean
//! of the three timed in interleaved rounds: on a shared, noisy machine a
//! busy spell then hits all three alike, where criterion's back-to-back
//! blocks can catch one and spare another. Then each of the three alone,
//! each run 3 ms after the last (the pause is not timed), as in a program
//! that starts a process now and then: a ForkServer start then finds a
//! spare child ready and a quiet machine, where in the interleaved rounds
//! it follows the Spawn run's exec and exit.
//!
//! The kernel's own floor under a forked start is measured too: `fork`,
//! `_exit(0)` in the new process and `waitpid`, done in a loop inside a
//! child of this binary held before `main`, the image the fork server forks
//! from. No start can be cheaper than that: it is the fork and the exit
//! alone, with no call, no result and no wake-up of another process.
//!
//! `cargo bench -p multiproc-benches --bench spawn`; procspawn is measured in the same run by
//! `benches/peers` (`cd benches/peers && cargo bench`), Python by
//! `benches/python/spawn.py`.

use std::hint::black_box;
use std::process::{Command, Stdio};

use criterion::{Criterion, criterion_group, criterion_main};
use multiproc::{Process, StartMethod, entry, process_entry, spawn};

#[process_entry]
fn trivial(x: u32) -> u32 {
    x + 1
}

/// The child's own memory, in KiB: (Rss, Pss, Private_Clean + Private_Dirty).
#[process_entry]
fn own_memory() -> (u64, u64, u64) {
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    let field = |name: &str| -> u64 {
        rollup
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (
        field("Rss:"),
        field("Pss:"),
        field("Private_Clean:") + field("Private_Dirty:"),
    )
}

/// Forks `rounds` times in this process (a child of the bench, held before
/// `main` with one thread), each new process calling `_exit(0)` at once and
/// each reaped with `waitpid` before the next fork; returns the total time.
#[process_entry]
fn fork_exit_wait(rounds: u64) -> std::time::Duration {
    multiproc::__private::fork_exit_wait(rounds).expect("fork")
}

/// The fork floor's per-round times in µs, `rounds` of them, each round
/// after `pause` if one is given (the pause is not timed), measured in one
/// child of this binary.
fn fork_floor_rounds(rounds: usize, pause: Option<std::time::Duration>) -> Vec<f64> {
    let child = spawn!(fork_exit_wait_each, rounds as u64, pause).expect("spawn");
    child.join().expect("join")
}

/// `fork_exit_wait` one round at a time, each after `pause` if given;
/// each round's time in µs.
#[process_entry]
fn fork_exit_wait_each(rounds: u64, pause: Option<std::time::Duration>) -> Vec<f64> {
    (0..rounds)
        .map(|_| {
            if let Some(pause) = pause {
                std::thread::sleep(pause);
            }
            fork_exit_wait(1).as_secs_f64() * 1e6
        })
        .collect()
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

fn spawn_join() {
    let value = spawn!(trivial, 1).expect("spawn").join().expect("join");
    black_box(value);
}

fn forkserver_join() {
    let value = Process::new(entry!(trivial), (1,))
        .start_method(StartMethod::ForkServer)
        .start()
        .expect("start")
        .join()
        .expect("join");
    black_box(value);
}

fn print_memory() {
    for method in [StartMethod::Spawn, StartMethod::ForkServer] {
        let (rss, pss, private) = Process::new(entry!(own_memory), ())
            .start_method(method)
            .start()
            .expect("start")
            .join()
            .expect("join");
        eprintln!(
            "memory of a {method:?} child: Rss {rss} KiB, Pss {pss} KiB, private {private} KiB"
        );
    }
}

/// Times `ROUNDS` runs of each of the three and prints each one's min,
/// median and mean, and the median ratios. `Interleaved`: rounds of the
/// three back to back (a ForkServer start then follows the Spawn run's
/// exec and exit). `Paused`: each of the three alone, each run after a
/// pause (not timed), as in a program that starts a process now and then
/// on an otherwise quiet machine.
fn print_rounds(pause: Option<std::time::Duration>) {
    const ROUNDS: usize = 300;
    let label = if pause.is_some() {
        "alone, 3 ms apart"
    } else {
        "interleaved"
    };
    let runs: [(&str, fn()); 3] = [
        ("floor: bare exec", bare_exec),
        ("Spawn start+join", spawn_join),
        ("ForkServer start+join", forkserver_join),
    ];
    let mut times = [const { Vec::new() }; 3];
    let mut time = |i: usize, run: fn()| {
        if let Some(pause) = pause {
            std::thread::sleep(pause);
        }
        let start = std::time::Instant::now();
        run();
        times[i].push(start.elapsed().as_secs_f64() * 1e6);
    };
    if pause.is_some() {
        for (i, (_, run)) in runs.iter().enumerate() {
            for _ in 0..ROUNDS {
                time(i, *run);
            }
        }
    } else {
        for _ in 0..ROUNDS {
            for (i, (_, run)) in runs.iter().enumerate() {
                time(i, *run);
            }
        }
    }
    let mut floor = fork_floor_rounds(ROUNDS, pause);
    floor.sort_by(f64::total_cmp);
    let fork_median = floor[ROUNDS / 2];
    eprintln!(
        "{label} {:22} min {:7.1} us  median {fork_median:7.1} us  mean {:7.1} us",
        "floor: fork+exit+wait",
        floor[0],
        floor.iter().sum::<f64>() / ROUNDS as f64
    );
    let mut medians = [0.0; 3];
    for (i, (name, _)) in runs.iter().enumerate() {
        let t = &mut times[i];
        t.sort_by(f64::total_cmp);
        medians[i] = t[ROUNDS / 2];
        let mean = t.iter().sum::<f64>() / ROUNDS as f64;
        eprintln!(
            "{label} {name:22} min {:7.1} us  median {:7.1} us  mean {mean:7.1} us",
            t[0], medians[i]
        );
    }
    eprintln!(
        "{label} medians: ForkServer is {:.1}x faster than the exec floor, {:.1}x than Spawn",
        medians[0] / medians[2],
        medians[1] / medians[2]
    );
    eprintln!(
        "{label} medians: ForkServer start+join is {:.2}x the fork floor",
        medians[2] / fork_median
    );
}

fn benches(c: &mut Criterion) {
    // Starts the server before the timings, as a program's first start would.
    forkserver_join();
    print_memory();
    print_rounds(None);
    print_rounds(Some(std::time::Duration::from_millis(3)));

    let mut group = c.benchmark_group("spawn");
    group.bench_function("floor: fork+exit+wait in a child of this binary", |b| {
        b.iter_custom(|iters| {
            spawn!(fork_exit_wait, iters)
                .expect("spawn")
                .join()
                .expect("join")
        })
    });
    group.bench_function("floor: bare exec of this binary", |b| b.iter(bare_exec));
    group.bench_function("multiproc: spawn!+join", |b| b.iter(spawn_join));
    group.bench_function("multiproc: ForkServer start+join", |b| {
        b.iter(forkserver_join)
    });
    group.finish();

    let heap = vec![1u8; 1 << 30];
    black_box(&heap);
    let mut group = c.benchmark_group("spawn with 1 GiB heap");
    group.bench_function("floor: bare exec of this binary", |b| b.iter(bare_exec));
    group.bench_function("multiproc: spawn!+join", |b| b.iter(spawn_join));
    group.bench_function("multiproc: ForkServer start+join", |b| {
        b.iter(forkserver_join)
    });
    group.finish();
    drop(heap);
}

criterion_group! {
    name = spawn_benches;
    config = Criterion::default().sample_size(50);
    targets = benches
}
criterion_main!(spawn_benches);
