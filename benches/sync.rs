//! Process-shared synchronisation, each against its baseline in the same run:
//!
//! - `value_increment/2_processes`: `*value.lock()? += 1` from two processes
//!   at once (throughput is the total of both).
//! - `uncontended_lock`: lock + unlock of a `multiproc::Lock` and of a
//!   `std::sync::Mutex`, in one thread.
//! - `ping_pong`: a round trip between two processes through two `Event`s,
//!   and through two pipes.
//!
//! Python's counterparts are in `benches/python/sync.py`.

use std::hint::black_box;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use multiproc::{Barrier, Event, Fd, Lock, Semaphore, Value, process_entry, spawn};

#[process_entry]
fn add_ones(total: Value<u64>, start: Barrier, times: u64) -> u64 {
    start.wait().expect("start barrier");
    let begin = Instant::now();
    for _ in 0..times {
        *total.lock().expect("lock") += 1;
    }
    begin.elapsed().as_nanos() as u64
}

fn value_increment(c: &mut Criterion) {
    let mut group = c.benchmark_group("value_increment");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.bench_function("2_processes", |b| {
        b.iter_custom(|iters| {
            let total = Value::new(0u64).expect("value");
            let start = Barrier::new(2).expect("barrier");
            let first = iters / 2;
            let a = spawn!(add_ones, total.clone(), start.clone(), first).expect("spawn");
            let b = spawn!(add_ones, total.clone(), start.clone(), iters - first).expect("spawn");
            let nanos = a.join().expect("join").max(b.join().expect("join"));
            assert_eq!(total.load(), iters);
            Duration::from_nanos(nanos)
        })
    });
    group.bench_function("1_process", |b| {
        let total = Value::new(0u64).expect("value");
        b.iter(|| *black_box(&total).lock().expect("lock") += 1)
    });
    group.finish();
}

fn uncontended_lock(c: &mut Criterion) {
    let mut group = c.benchmark_group("uncontended_lock");
    group.throughput(Throughput::Elements(1));
    let lock = Lock::new().expect("lock");
    group.bench_function("multiproc::Lock", |b| {
        b.iter(|| drop(black_box(&lock).lock().expect("lock")))
    });
    let mutex = std::sync::Mutex::new(());
    group.bench_function("std::sync::Mutex", |b| {
        b.iter(|| drop(black_box(&mutex).lock().expect("mutex")))
    });
    // A permit taken and given back, counted as this process's meanwhile.
    let semaphore = Semaphore::new(1).expect("semaphore");
    group.bench_function("multiproc::Semaphore", |b| {
        b.iter(|| drop(black_box(&semaphore).acquire()))
    });
    group.finish();
}

#[process_entry]
fn pong_events(ping: Event, pong: Event, rounds: u64) {
    for _ in 0..rounds {
        ping.wait();
        ping.clear();
        pong.set();
    }
}

#[process_entry]
fn pong_pipes(ping: Fd, pong: Fd, rounds: u64) {
    let (mut ping, mut pong) = (ping.into_file(), pong.into_file());
    let mut byte = [0u8];
    for _ in 0..rounds {
        ping.read_exact(&mut byte).expect("read");
        pong.write_all(&byte).expect("write");
    }
}

fn ping_pong(c: &mut Criterion) {
    let mut group = c.benchmark_group("ping_pong");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.bench_function("multiproc::Event", |b| {
        b.iter_custom(|iters| {
            let (ping, pong) = (Event::new().expect("event"), Event::new().expect("event"));
            // One untimed round first, so the child's start-up is not measured.
            let child = spawn!(pong_events, ping.clone(), pong.clone(), iters + 1).expect("spawn");
            let round = || {
                ping.set();
                pong.wait();
                pong.clear();
            };
            round();
            let begin = Instant::now();
            for _ in 0..iters {
                round();
            }
            let elapsed = begin.elapsed();
            child.join().expect("join");
            elapsed
        })
    });
    group.bench_function("pipe", |b| {
        b.iter_custom(|iters| {
            let (ping_rx, mut ping_tx) = std::io::pipe().expect("pipe");
            let (mut pong_rx, pong_tx) = std::io::pipe().expect("pipe");
            let child = spawn!(
                pong_pipes,
                Fd::from(OwnedFd::from(ping_rx)),
                Fd::from(OwnedFd::from(pong_tx)),
                iters + 1
            )
            .expect("spawn");
            let mut byte = [7u8];
            let mut round = || {
                ping_tx.write_all(&byte).expect("write");
                pong_rx.read_exact(&mut byte).expect("read");
            };
            round();
            let begin = Instant::now();
            for _ in 0..iters {
                round();
            }
            let elapsed = begin.elapsed();
            drop(ping_tx);
            child.join().expect("join");
            elapsed
        })
    });
    group.finish();
}

criterion_group!(benches, value_increment, uncontended_lock, ping_pong);
criterion_main!(benches);
