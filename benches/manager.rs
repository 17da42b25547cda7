//! The Manager, each case beside its baseline in the same run:
//!
//! - a dict `insert` + `get` pair, from a child process, vs the same two
//!   round trips of 8 bytes over a raw socketpair to an echo process
//!   (the floor for two request/reply exchanges between processes), with
//!   client and server pinned to one CPU and to two (on this 2-core
//!   machine a cross-CPU wake-up costs far more than the work);
//! - one request on the connection a process keeps open vs one on a
//!   fresh connection (what caching a connection per process saves);
//! - throughput of set+get pairs with 4 client processes vs 1.
//!
//! `cargo bench -p multiproc-benches --bench manager`; Python's numbers:
//! `python3 benches/python/manager.py`.

use std::hint::black_box;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use multiproc::{Connection, DictProxy, Fd, Manager, Pipe, process_entry, spawn};

/// Pins this process to `cpu`, an index the parent already reduced to the
/// CPUs it may use.
fn pin(cpu: Option<usize>) {
    if let Some(cpu) = cpu {
        let mut set = rustix::thread::CpuSet::new();
        set.set(cpu);
        rustix::thread::sched_setaffinity(None, &set).expect("sched_setaffinity");
    }
}

/// Runs `n` insert+get pairs on its own key each time the parent asks;
/// reports the nanoseconds they took.
#[process_entry]
fn manager_client(d: DictProxy<u64, u64>, key: u64, ctl: Connection<u64>, cpu: Option<usize>) {
    pin(cpu);
    d.insert(key, 0).unwrap();
    while let Ok(n) = ctl.recv() {
        let start = Instant::now();
        for i in 0..n {
            d.insert(key, i).unwrap();
            black_box(d.get(&key).unwrap());
        }
        ctl.send(&(start.elapsed().as_nanos() as u64)).unwrap();
    }
}

/// Runs `n` pairs of 8-byte round trips to an echo process.
#[process_entry]
fn raw_client(fd: Fd, ctl: Connection<u64>, cpu: Option<usize>) {
    pin(cpu);
    let mut stream = UnixStream::from(fd.into_owned_fd());
    let mut buf = [0u8; 8];
    while let Ok(n) = ctl.recv() {
        let start = Instant::now();
        for i in 0..n {
            for _ in 0..2 {
                stream.write_all(&i.to_le_bytes()).unwrap();
                stream.read_exact(&mut buf).unwrap();
                black_box(buf);
            }
        }
        ctl.send(&(start.elapsed().as_nanos() as u64)).unwrap();
    }
}

#[process_entry]
fn raw_echo(fd: Fd) {
    let mut stream = UnixStream::from(fd.into_owned_fd());
    let mut buf = [0u8; 8];
    while stream.read_exact(&mut buf).is_ok() {
        if stream.write_all(&buf).is_err() {
            break;
        }
    }
}

/// Asks each client for `iters / clients` pairs; the wall time until all answered.
fn drive(ctls: &[Connection<u64>], iters: u64) -> Duration {
    let each = iters.div_ceil(ctls.len() as u64).max(1);
    let start = Instant::now();
    for c in ctls {
        c.send(&each).unwrap();
    }
    for c in ctls {
        c.recv().unwrap();
    }
    start.elapsed()
}

/// Asks one client for `iters` pairs; the time it measured itself.
fn timed(ctl: &Connection<u64>, iters: u64) -> Duration {
    ctl.send(&iters).unwrap();
    Duration::from_nanos(ctl.recv().unwrap())
}

fn set_get(c: &mut Criterion) {
    let all = rustix::thread::sched_getaffinity(None).expect("sched_getaffinity");
    let nth = |n: usize| {
        (0..rustix::thread::CpuSet::MAX_CPU)
            .filter(|&cpu| all.is_set(cpu))
            .nth(n % all.count().max(1) as usize)
            .unwrap_or(0)
    };
    let mut group = c.benchmark_group("set+get pair from a child");
    for (placement, server_cpu, client_cpu) in [("same CPU", 0, 0), ("different CPUs", 0, 1)] {
        let (server_cpu, client_cpu) = (nth(server_cpu), nth(client_cpu));
        // The server and the echo process inherit this pinning.
        pin(Some(server_cpu));
        let (echo_end, client_end) = UnixStream::pair().unwrap();
        let echo = spawn!(raw_echo, Fd::from(OwnedFd::from(echo_end))).unwrap();
        let (ctl, theirs) = Pipe::duplex().unwrap();
        let raw = spawn!(
            raw_client,
            Fd::from(OwnedFd::from(client_end)),
            theirs,
            Some(client_cpu)
        )
        .unwrap();
        group.bench_function(
            BenchmarkId::new("raw socketpair, 2 round trips (baseline)", placement),
            |b| b.iter_custom(|iters| timed(&ctl, iters)),
        );
        drop(ctl);
        raw.join().unwrap();
        echo.join().unwrap();

        let manager = Manager::start().unwrap();
        let d = manager.dict::<u64, u64>().unwrap();
        let (ctl, theirs) = Pipe::duplex().unwrap();
        let client = spawn!(manager_client, d.clone(), 1, theirs, Some(client_cpu)).unwrap();
        group.bench_function(
            BenchmarkId::new("manager dict insert+get", placement),
            |b| b.iter_custom(|iters| timed(&ctl, iters)),
        );
        drop(ctl);
        client.join().unwrap();
        rustix::thread::sched_setaffinity(None, &all).expect("sched_setaffinity");
    }
    group.finish();

    // From this process, on the server's CPU.
    pin(Some(nth(0)));
    let manager = Manager::start().unwrap();
    let d = manager.dict::<u64, u64>().unwrap();
    let mut group = c.benchmark_group("one request (same CPU)");
    group.bench_function("kept connection (dict len)", |b| {
        b.iter(|| black_box(d.len().unwrap()))
    });
    // A ping frame: length 9, op 1, object 0.
    let ping = [9u8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
    group.bench_function("fresh connection each time (ping)", |b| {
        b.iter(|| {
            let mut s = UnixStream::from(manager.__raw_connection().unwrap());
            s.write_all(&ping).unwrap();
            let mut reply = [0u8; 5];
            s.read_exact(&mut reply).unwrap();
            black_box(reply);
        })
    });
    group.finish();
    rustix::thread::sched_setaffinity(None, &all).expect("sched_setaffinity");
}

fn concurrent(c: &mut Criterion) {
    // Unpinned: the server's threads and the clients share both CPUs.
    let mut group = c.benchmark_group("set+get throughput");
    group.throughput(Throughput::Elements(1));
    let manager = Manager::start().unwrap();
    let d = manager.dict::<u64, u64>().unwrap();
    for clients in [1u64, 4] {
        let mut ctls = Vec::new();
        let mut children = Vec::new();
        for key in 0..clients {
            let (ctl, theirs) = Pipe::duplex().unwrap();
            children.push(spawn!(manager_client, d.clone(), key, theirs, None).unwrap());
            ctls.push(ctl);
        }
        group.bench_function(format!("{clients} client processes"), |b| {
            b.iter_custom(|iters| drive(&ctls, iters))
        });
        drop(ctls);
        for child in children {
            child.join().unwrap();
        }
    }
    group.finish();
}

criterion_group! {
    name = manager;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = set_get, concurrent
}
criterion_main!(manager);
