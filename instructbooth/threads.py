"""Independent pieces of one step run side by side in Python threads (CPU runs).

On a CPU the demo's UNet calls are too small for torch's intra-op threads to pay, and two
OpenMP threads that wait for each other at every op collapse when the machine is busy. Two
Python threads that each run a whole batch with one torch thread overlap instead: torch
releases the GIL inside every op, so on 2 idle cores 10 UNet forwards of 32 images take half
the time (2.06x; forward + backward 1.90x), and a thread that the OS sets aside delays only
its own batch. Results do not depend on the number of threads: each batch is computed as it
would be alone (benchmarks/threads.py measures it; tests/test_rl_threads.py checks it bit for bit).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, Sequence, TypeVar

T = TypeVar("T")


def in_order(jobs: Sequence[Callable[[], T]], workers: int) -> Iterator[T]:
    """Each job's result, in the order of `jobs`, with up to `workers` of them running at once.

    One worker runs them one by one in this thread, each when its result is asked for. Grad mode
    and autocast are per thread: a job sets what it needs. An exception in a job comes out here;
    jobs not yet started are cancelled and running ones finish first."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield job()
        return
    pool = ThreadPoolExecutor(max_workers=min(workers, len(jobs)), thread_name_prefix="instructbooth")
    try:
        futures = [pool.submit(job) for job in jobs]
        for future in futures:
            yield future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
