//! IPC between two processes, each case against its raw-kernel baseline in
//! the same run:
//!
//! - ping-pong of a small typed message over a `Connection` vs 8 bytes over
//!   a raw `UnixStream` socketpair, with both processes pinned to the same
//!   CPU and to different CPUs (placement dominates on a 2-core machine);
//! - one-way throughput of 64 KiB, 256 KiB and 16 MiB messages (the last
//!   two through a lane), via `send_bytes` and as a typed `Vec<u8>`, vs
//!   `write_all`/`read_exact` on a raw socketpair;
//! - `Queue` throughput of small items, one producer to one consumer and
//!   two to two;
//! - `Queue` throughput of 64 KiB and 2 MiB byte items parent to child, as
//!   a `Vec<u8>` and as a struct holding one, vs the same bytes over a raw
//!   socketpair and as a `Vec<u8>` (and the struct) over a `Connection`.
//!
//! `cargo bench -p multiproc-benches --bench ipc`; Python's numbers: `python3 benches/python/ipc.py`.

use std::hint::black_box;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main,
};
use multiproc::{Connection, Fd, JoinHandle, Pipe, Queue, process_entry, spawn};
use serde::{Deserialize, Serialize};

/// Pins this process to `cpu`, an index the parent already reduced to the
/// CPUs it may use (a pinned parent's child cannot tell how many there are:
/// `available_parallelism` counts the inherited affinity, one CPU).
fn pin(cpu: Option<usize>) {
    if let Some(cpu) = cpu {
        let mut set = rustix::thread::CpuSet::new();
        set.set(cpu);
        rustix::thread::sched_setaffinity(None, &set).expect("sched_setaffinity");
    }
}

#[process_entry]
fn raw_echo(fd: Fd, cpu: Option<usize>) {
    pin(cpu);
    let mut stream = UnixStream::from(fd.into_owned_fd());
    let mut buf = [0u8; 8];
    while stream.read_exact(&mut buf).is_ok() {
        if stream.write_all(&buf).is_err() {
            break;
        }
    }
}

#[process_entry]
fn conn_echo(conn: Connection<u64>, cpu: Option<usize>) {
    pin(cpu);
    while let Ok(x) = conn.recv() {
        if conn.send(&x).is_err() {
            break;
        }
    }
}

fn ping_pong(c: &mut Criterion) {
    let mut group = c.benchmark_group("ping-pong");
    // Restored after each placement, so that later groups (and their
    // children, which inherit it) run on every CPU again.
    let all = rustix::thread::sched_getaffinity(None).expect("sched_getaffinity");
    let nth = |n: usize| {
        (0..rustix::thread::CpuSet::MAX_CPU)
            .filter(|&cpu| all.is_set(cpu))
            .nth(n % all.count().max(1) as usize)
            .unwrap_or(0)
    };
    for (placement, parent_cpu, child_cpu) in [("same CPU", 0, 0), ("different CPUs", 0, 1)] {
        let (parent_cpu, child_cpu) = (nth(parent_cpu), nth(child_cpu));
        pin(Some(parent_cpu));
        let (mut mine, theirs) = UnixStream::pair().unwrap();
        let raw = spawn!(raw_echo, Fd::from(OwnedFd::from(theirs)), Some(child_cpu)).unwrap();
        group.bench_function(
            BenchmarkId::new("raw socketpair (8 bytes)", placement),
            |b| {
                let mut buf = [0u8; 8];
                b.iter(|| {
                    mine.write_all(&7u64.to_le_bytes()).unwrap();
                    mine.read_exact(&mut buf).unwrap();
                    black_box(buf);
                })
            },
        );
        drop(mine);
        raw.join().unwrap();

        let (conn, theirs) = Pipe::<u64>::duplex().unwrap();
        let child = spawn!(conn_echo, theirs, Some(child_cpu)).unwrap();
        group.bench_function(BenchmarkId::new("Connection<u64>", placement), |b| {
            b.iter(|| {
                conn.send(&7).unwrap();
                black_box(conn.recv().unwrap());
            })
        });
        drop(conn);
        child.join().unwrap();
        rustix::thread::sched_setaffinity(None, &all).expect("sched_setaffinity");
    }
    group.finish();
}

/// Receives batches: a count, then that many messages of `size` bytes, then acks.
/// The floor: `msg` written to a raw socketpair, a child reading each.
fn raw_socketpair(group: &mut BenchmarkGroup<'_, WallTime>, label: &str, msg: &[u8]) {
    let (mut mine, theirs) = UnixStream::pair().unwrap();
    let sink = spawn!(raw_sink, Fd::from(OwnedFd::from(theirs)), msg.len()).unwrap();
    group.bench_function(BenchmarkId::new("raw socketpair", label), |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            mine.write_all(&iters.to_le_bytes()).unwrap();
            for _ in 0..iters {
                mine.write_all(msg).unwrap();
            }
            let mut ack = [0u8; 1];
            mine.read_exact(&mut ack).unwrap();
            start.elapsed()
        })
    });
    drop(mine);
    sink.join().unwrap();
}

#[process_entry]
fn raw_sink(fd: Fd, size: usize) {
    let mut stream = UnixStream::from(fd.into_owned_fd());
    let mut buf = vec![0u8; size];
    let mut count = [0u8; 8];
    while stream.read_exact(&mut count).is_ok() {
        for _ in 0..u64::from_le_bytes(count) {
            stream.read_exact(&mut buf).unwrap();
        }
        stream.write_all(&[1]).unwrap();
    }
}

#[process_entry]
fn bytes_sink(conn: Connection<Vec<u8>>, typed: bool) {
    while let Ok(count) = conn.recv_bytes() {
        let mut n = [0u8; 8];
        n.copy_from_slice(&count);
        for _ in 0..u64::from_le_bytes(n) {
            let msg = if typed {
                conn.recv().unwrap()
            } else {
                conn.recv_bytes().unwrap()
            };
            black_box(msg);
        }
        conn.send_bytes(&[1]).unwrap();
    }
}

fn throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("throughput");
    for (label, size) in [
        ("64 KiB", 64 << 10),
        ("256 KiB", 256 << 10),
        ("16 MiB", 16 << 20),
    ] {
        group.throughput(Throughput::Bytes(size as u64));
        if size > 1 << 20 {
            group.sample_size(20);
        }
        let msg = vec![0xa5u8; size];

        raw_socketpair(&mut group, label, &msg);

        for typed in [false, true] {
            let (conn, theirs) = Pipe::<Vec<u8>>::duplex().unwrap();
            let sink = spawn!(bytes_sink, theirs, typed).unwrap();
            let name = if typed {
                "send(&Vec<u8>)"
            } else {
                "send_bytes"
            };
            group.bench_function(BenchmarkId::new(name, label), |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    conn.send_bytes(&iters.to_le_bytes()).unwrap();
                    for _ in 0..iters {
                        if typed {
                            conn.send(&msg).unwrap();
                        } else {
                            conn.send_bytes(&msg).unwrap();
                        }
                    }
                    conn.recv_bytes().unwrap();
                    start.elapsed()
                })
            });
            drop(conn);
            sink.join().unwrap();
        }
    }
    group.finish();
}

/// Waits for a count on `control`, then takes that many items and acks;
/// until `control` ends. The consumers' common body.
fn consume_counted<T: Serialize + serde::de::DeserializeOwned + 'static>(
    q: &Queue<T>,
    control: &Connection<u64>,
) {
    while let Ok(n) = control.recv() {
        for _ in 0..n {
            black_box(q.get().unwrap());
        }
        control.send(&n).unwrap();
    }
}

/// Waits for a count on `control`, then takes that many items and acks.
#[process_entry]
fn queue_consumer(q: Queue<u64>, control: Connection<u64>) {
    consume_counted(&q, &control);
}

/// Waits for a count on `control`, then puts that many items and acks.
#[process_entry]
fn queue_producer(q: Queue<u64>, control: Connection<u64>) {
    while let Ok(n) = control.recv() {
        for i in 0..n {
            q.put(i).unwrap();
        }
        control.send(&n).unwrap();
    }
}

fn queue(c: &mut Criterion) {
    let mut group = c.benchmark_group("queue");
    for (label, pairs) in [("1 -> 1", 1u64), ("2 -> 2", 2)] {
        // One iteration: each producer puts one item, each consumer takes one.
        group.throughput(Throughput::Elements(pairs));
        let q = Queue::<u64>::bounded(100_000).unwrap();
        let mut controls = Vec::new();
        let mut children: Vec<JoinHandle<()>> = Vec::new();
        for _ in 0..pairs {
            let (c1, t1) = Pipe::duplex().unwrap();
            children.push(spawn!(queue_producer, q.clone(), t1).unwrap());
            let (c2, t2) = Pipe::duplex().unwrap();
            children.push(spawn!(queue_consumer, q.clone(), t2).unwrap());
            controls.push(c1);
            controls.push(c2);
        }
        group.bench_function(BenchmarkId::new("small items", label), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for control in &controls {
                    control.send(&iters).unwrap();
                }
                for control in &controls {
                    control.recv().unwrap();
                }
                start.elapsed()
            })
        });
        drop(controls);
        for child in children {
            child.join().unwrap();
        }
    }
    group.finish();
}

/// A message that carries bulk bytes beside other fields.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Blob {
    id: u64,
    data: Vec<u8>,
}

/// Waits for a count on `control`, then takes that many items and acks.
#[process_entry]
fn bytes_queue_consumer(q: Queue<Vec<u8>>, control: Connection<u64>) {
    consume_counted(&q, &control);
}

/// Waits for a count on `control`, then takes that many items and acks.
#[process_entry]
fn blob_queue_consumer(q: Queue<Blob>, control: Connection<u64>) {
    consume_counted(&q, &control);
}

/// Receives batches of `Blob`s, each announced by a count, and acks each.
#[process_entry]
fn blob_sink(conn: Connection<Blob>) {
    while let Ok(count) = conn.recv_bytes() {
        let mut n = [0u8; 8];
        n.copy_from_slice(&count);
        for _ in 0..u64::from_le_bytes(n) {
            black_box(conn.recv().unwrap());
        }
        conn.send_bytes(&[1]).unwrap();
    }
}

/// Puts `iters` items on `q` for the child behind `control`, and waits for
/// its ack: the time from the first put to the last get.
fn timed_puts<T: Serialize + serde::de::DeserializeOwned + Clone + 'static>(
    q: &Queue<T>,
    control: &Connection<u64>,
    item: &T,
    iters: u64,
) -> Duration {
    let start = Instant::now();
    control.send(&iters).unwrap();
    for _ in 0..iters {
        q.put(item.clone()).unwrap();
    }
    control.recv().unwrap();
    start.elapsed()
}

fn queue_bytes(c: &mut Criterion) {
    let mut group = c.benchmark_group("queue bytes");
    for (label, size) in [("64 KiB", 64 << 10), ("2 MiB", 2 << 20)] {
        group.throughput(Throughput::Bytes(size as u64));
        if size > 1 << 20 {
            group.sample_size(20);
        }
        let msg = vec![0xa5u8; size];
        let blob = Blob {
            id: 7,
            data: msg.clone(),
        };

        raw_socketpair(&mut group, label, &msg);

        let (conn, theirs) = Pipe::<Vec<u8>>::duplex().unwrap();
        let sink = spawn!(bytes_sink, theirs, true).unwrap();
        group.bench_function(BenchmarkId::new("Connection send(&Vec<u8>)", label), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                conn.send_bytes(&iters.to_le_bytes()).unwrap();
                for _ in 0..iters {
                    conn.send(&msg).unwrap();
                }
                conn.recv_bytes().unwrap();
                start.elapsed()
            })
        });
        drop(conn);
        sink.join().unwrap();

        let (conn, theirs) = Pipe::<Blob>::duplex().unwrap();
        let sink = spawn!(blob_sink, theirs).unwrap();
        group.bench_function(BenchmarkId::new("Connection send(&Blob)", label), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                conn.send_bytes(&iters.to_le_bytes()).unwrap();
                for _ in 0..iters {
                    conn.send(&blob).unwrap();
                }
                conn.recv_bytes().unwrap();
                start.elapsed()
            })
        });
        drop(conn);
        sink.join().unwrap();

        // Unbounded, as Python's default `Queue()`; the clone each put
        // needs (a put takes its item) is counted in, as a Python caller
        // pays nothing for it only because it shares the object.
        let q = Queue::<Vec<u8>>::new().unwrap();
        let (control, theirs) = Pipe::duplex().unwrap();
        let child = spawn!(bytes_queue_consumer, q.clone(), theirs).unwrap();
        group.bench_function(BenchmarkId::new("Queue<Vec<u8>>", label), |b| {
            b.iter_custom(|iters| timed_puts(&q, &control, &msg, iters))
        });
        drop(control);
        child.join().unwrap();

        let q = Queue::<Blob>::new().unwrap();
        let (control, theirs) = Pipe::duplex().unwrap();
        let child = spawn!(blob_queue_consumer, q.clone(), theirs).unwrap();
        group.bench_function(BenchmarkId::new("Queue<Blob>", label), |b| {
            b.iter_custom(|iters| timed_puts(&q, &control, &blob, iters))
        });
        drop(control);
        child.join().unwrap();
    }
    group.finish();
}

criterion_group! {
    name = ipc;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = ping_pong, throughput, queue, queue_bytes
}
criterion_main!(ipc);
