"""Python's multiprocessing: start + join of a trivial target, per start method.

Run: python3 benches/python/spawn.py [iterations]
Prints the mean time per start+join for spawn, fork and forkserver.
"""

import multiprocessing as mp
import sys
import time


def trivial(q, x):
    q.put(x + 1)


def bench(method, n):
    ctx = mp.get_context(method)
    q = ctx.SimpleQueue()
    # Warm up (the forkserver starts on first use).
    p = ctx.Process(target=trivial, args=(q, 1))
    p.start()
    q.get()
    p.join()
    start = time.perf_counter()
    for _ in range(n):
        p = ctx.Process(target=trivial, args=(q, 1))
        p.start()
        q.get()
        p.join()
    return (time.perf_counter() - start) / n


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    for method in ("spawn", "fork", "forkserver"):
        per = bench(method, n)
        print(f"python {method:10s} start+join: {per * 1e3:8.3f} ms")
