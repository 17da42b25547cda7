"""Python's multiprocessing.Manager counterpart of benches/manager.rs.

Run: python3 benches/python/manager.py
Prints: a dict set+get pair from a child process (per pair), with the
manager's server and the child pinned to one CPU and to two, and the
throughput of set+get pairs with 1 and 4 client processes (unpinned).
"""

import multiprocessing as mp
import os
import time

N = 20_000


def pairs(d, key, n, start, out, cpu):
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    d[key] = 0
    start.wait()
    begin = time.perf_counter()
    for i in range(n):
        d[key] = i
        d[key]
    out.put(time.perf_counter() - begin)


def run(manager, clients, n, cpu=None):
    d = manager.dict()
    start = mp.Barrier(clients + 1)
    out = mp.Queue()
    ps = [
        mp.Process(target=pairs, args=(d, k, n, start, out, cpu))
        for k in range(clients)
    ]
    for p in ps:
        p.start()
    start.wait()
    begin = time.perf_counter()
    times = [out.get() for _ in ps]
    wall = time.perf_counter() - begin
    for p in ps:
        p.join()
    return times, wall


if __name__ == "__main__":
    cpus = sorted(os.sched_getaffinity(0))
    for placement, client_cpu in (("same CPU", cpus[0]), ("different CPUs", cpus[-1])):
        # The manager's server inherits this pinning.
        os.sched_setaffinity(0, {cpus[0]})
        with mp.Manager() as manager:
            run(manager, 1, 1000, client_cpu)  # warm up
            times, _ = run(manager, 1, N, client_cpu)
            print(f"set+get pair from a child, {placement}: {times[0] / N * 1e6:.1f} us")
        os.sched_setaffinity(0, set(cpus))
    with mp.Manager() as manager:
        for clients in (1, 4):
            _, wall = run(manager, clients, N // clients)
            print(f"throughput, {clients} client(s): {N / wall:,.0f} pairs/s")
