"""Python's multiprocessing counterparts of benches/ipc.rs.

Run: python3 benches/python/ipc.py
Prints: Pipe ping-pong round trip, one-way send_bytes throughput at 64 KiB
and 16 MiB, Queue throughput of small items (1 -> 1 and 2 -> 2), and
Queue throughput of 64 KiB and 2 MiB bytes items, parent to child (the
`queue bytes` group of benches/ipc.rs).
"""

import multiprocessing as mp
import time


def echo(conn):
    # A forked child inherits the parent's end too, so it would never see
    # EOF: stop at a sentinel instead.
    while True:
        x = conn.recv()
        if x is None:
            return
        conn.send(x)


def ping_pong(n=20000):
    a, b = mp.Pipe()
    p = mp.Process(target=echo, args=(b,))
    p.start()
    b.close()
    for _ in range(1000):
        a.send(7)
        a.recv()
    start = time.perf_counter()
    for _ in range(n):
        a.send(7)
        a.recv()
    per = (time.perf_counter() - start) / n
    a.send(None)
    p.join()
    return per


def sink(conn, n):
    for _ in range(n):
        conn.recv_bytes()
    conn.send_bytes(b"k")


def throughput(size, n):
    a, b = mp.Pipe()
    p = mp.Process(target=sink, args=(b, n))
    p.start()
    msg = b"\xa5" * size
    start = time.perf_counter()
    for _ in range(n):
        a.send_bytes(msg)
    a.recv_bytes()
    elapsed = time.perf_counter() - start
    p.join()
    return size * n / elapsed


def producer(q, n):
    for i in range(n):
        q.put(i)


def consumer(q, n, done):
    for _ in range(n):
        q.get()
    done.put(1)


def queue(pairs, n=200000):
    q = mp.Queue()
    done = mp.Queue()
    procs = [mp.Process(target=consumer, args=(q, n, done)) for _ in range(pairs)]
    procs += [mp.Process(target=producer, args=(q, n)) for _ in range(pairs)]
    start = time.perf_counter()
    for p in procs:
        p.start()
    for _ in range(pairs):
        done.get()
    elapsed = time.perf_counter() - start
    for p in procs:
        p.join()
    return pairs * n / elapsed


def bytes_consumer(q, n, done):
    for _ in range(n):
        q.get()
    done.put(1)


def queue_bytes(size, n):
    q = mp.Queue()
    done = mp.Queue()
    p = mp.Process(target=bytes_consumer, args=(q, n, done))
    p.start()
    msg = b"\xa5" * size
    # Warm up: the child is running and the feeder thread started.
    q.put(msg)
    start = time.perf_counter()
    for _ in range(n - 1):
        q.put(msg)
    done.get()
    elapsed = time.perf_counter() - start
    p.join()
    return size * (n - 1) / elapsed


if __name__ == "__main__":
    print(f"python Pipe ping-pong:           {ping_pong() * 1e6:8.2f} us per round trip")
    print(f"python send_bytes 64 KiB:        {throughput(64 << 10, 20000) / 2**30:8.2f} GiB/s")
    print(f"python send_bytes 16 MiB:        {throughput(16 << 20, 100) / 2**30:8.2f} GiB/s")
    print(f"python Queue small items 1 -> 1: {queue(1) / 1e6:8.3f} M items/s")
    print(f"python Queue small items 2 -> 2: {queue(2) / 1e6:8.3f} M items/s")
    print(f"python Queue bytes 64 KiB:       {queue_bytes(64 << 10, 20000) / 2**30:8.2f} GiB/s")
    print(f"python Queue bytes 2 MiB:        {queue_bytes(2 << 20, 1000) / 2**30:8.2f} GiB/s")
