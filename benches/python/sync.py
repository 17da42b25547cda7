"""Python's counterparts of benches/sync.rs, for comparison.

    python3 benches/python/sync.py

- Value += 1 under get_lock() from 2 processes (total ops/s)
- uncontended Lock acquire + release, in one process
- Event ping-pong between two processes (round trips/s), and pipe ping-pong
"""

import multiprocessing as mp
import os
import time

N_INCREMENTS = 200_000
N_UNCONTENDED = 1_000_000
N_ROUNDS = 20_000


def add_ones(total, start, times, out):
    start.wait()
    begin = time.perf_counter()
    for _ in range(times):
        with total.get_lock():
            total.value += 1
    out.put(time.perf_counter() - begin)


def value_increment():
    total = mp.Value("Q", 0)
    start = mp.Barrier(2)
    out = mp.Queue()
    half = N_INCREMENTS // 2
    procs = [mp.Process(target=add_ones, args=(total, start, half, out)) for _ in range(2)]
    for p in procs:
        p.start()
    elapsed = max(out.get(), out.get())
    for p in procs:
        p.join()
    assert total.value == 2 * half
    print(f"value_increment/2_processes: {2 * half / elapsed / 1e6:.2f} M ops/s")


def uncontended_lock():
    lock = mp.Lock()
    begin = time.perf_counter()
    for _ in range(N_UNCONTENDED):
        lock.acquire()
        lock.release()
    elapsed = time.perf_counter() - begin
    print(f"uncontended_lock/multiprocessing.Lock: {elapsed / N_UNCONTENDED * 1e9:.1f} ns/op")


def pong_events(ping, pong, rounds):
    for _ in range(rounds):
        ping.wait()
        ping.clear()
        pong.set()


def event_ping_pong():
    ping, pong = mp.Event(), mp.Event()
    child = mp.Process(target=pong_events, args=(ping, pong, N_ROUNDS + 1))
    child.start()

    def one_round():
        ping.set()
        pong.wait()
        pong.clear()

    one_round()
    begin = time.perf_counter()
    for _ in range(N_ROUNDS):
        one_round()
    elapsed = time.perf_counter() - begin
    child.join()
    print(f"ping_pong/multiprocessing.Event: {elapsed / N_ROUNDS * 1e6:.2f} us/round trip")


def pong_pipes(ping_r, pong_w, rounds):
    for _ in range(rounds):
        os.write(pong_w, os.read(ping_r, 1))


def pipe_ping_pong():
    ping_r, ping_w = os.pipe()
    pong_r, pong_w = os.pipe()
    child = mp.Process(target=pong_pipes, args=(ping_r, pong_w, N_ROUNDS + 1))
    child.start()

    def one_round():
        os.write(ping_w, b"x")
        os.read(pong_r, 1)

    one_round()
    begin = time.perf_counter()
    for _ in range(N_ROUNDS):
        one_round()
    elapsed = time.perf_counter() - begin
    child.join()
    print(f"ping_pong/os.pipe: {elapsed / N_ROUNDS * 1e6:.2f} us/round trip")


if __name__ == "__main__":
    # fork keeps the raw pipe descriptors valid in the child.
    mp.set_start_method("fork")
    value_increment()
    uncontended_lock()
    event_ping_pong()
    pipe_ping_pong()
