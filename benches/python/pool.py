"""Python's multiprocessing.Pool on the workloads of benches/pool.rs.

Run: python3 benches/python/pool.py
Prints the per-task time of a trivial function over Pool(2).map with
chunksize 1 and the default chunksize, and a CPU-bound map of 100 tasks of
about 1 ms over 2 workers against the ideal (100 ms of work / 2).
"""

import multiprocessing as mp
import time

TRIVIAL_TASKS = 20_000
CPU_TASKS = 100


def trivial(x):
    return x + 1


def spin(iters):
    x = 0x9E3779B97F4A7C15
    mask = (1 << 64) - 1
    for _ in range(iters):
        x ^= (x << 13) & mask
        x ^= x >> 7
        x ^= (x << 17) & mask
    return x


def calibrate(target):
    iters = 1000
    while True:
        start = time.perf_counter()
        spin(iters)
        took = time.perf_counter() - start
        if took > 0.02:
            return int(iters * target / took)
        iters *= 2


def best_of(n, f):
    best = float("inf")
    for _ in range(n):
        start = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - start)
    return best


if __name__ == "__main__":
    mp.set_start_method("fork")
    with mp.Pool(2) as pool:
        pool.map(trivial, range(100))
        t = best_of(5, lambda: pool.map(trivial, range(TRIVIAL_TASKS), chunksize=1))
        print(f"python Pool(2).map chunksize 1:       {t / TRIVIAL_TASKS * 1e6:7.2f} us/task")
        t = best_of(5, lambda: pool.map(trivial, range(TRIVIAL_TASKS)))
        print(f"python Pool(2).map default chunksize: {t / TRIVIAL_TASKS * 1e6:7.2f} us/task")
        t = best_of(3, lambda: sum(pool.imap(trivial, range(TRIVIAL_TASKS))))
        print(f"python Pool(2).imap chunksize 1:      {t / TRIVIAL_TASKS * 1e6:7.2f} us/task")
        iters = calibrate(0.001)
        ideal = CPU_TASKS * 0.001 / 2
        t = best_of(5, lambda: pool.map(spin, [iters] * CPU_TASKS))
        print(f"python Pool(2).map {CPU_TASKS} x 1 ms: {t * 1e3:7.2f} ms (ideal {ideal * 1e3:.0f} ms, {ideal / t:.2f} of ideal)")
