"""Python's multiprocessing.Manager counterpart of benches/manager.rs.

Run: python3 benches/python/manager.py
Prints: a dict set+get pair from a child process (per pair), and the
throughput of set+get pairs with 1 and 4 client processes.
"""

import multiprocessing as mp
import time

N = 20_000


def pairs(d, key, n, start, out):
    d[key] = 0
    start.wait()
    begin = time.perf_counter()
    for i in range(n):
        d[key] = i
        d[key]
    out.put(time.perf_counter() - begin)


def run(manager, clients, n):
    d = manager.dict()
    start = mp.Barrier(clients + 1)
    out = mp.Queue()
    ps = [mp.Process(target=pairs, args=(d, k, n, start, out)) for k in range(clients)]
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
    with mp.Manager() as manager:
        run(manager, 1, 1000)  # warm up
        times, _ = run(manager, 1, N)
        print(f"set+get pair from a child: {times[0] / N * 1e6:.1f} us")
        for clients in (1, 4):
            _, wall = run(manager, clients, N // clients)
            print(f"throughput, {clients} client(s): {N / wall:,.0f} pairs/s")
