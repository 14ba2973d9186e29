"""Products on the CPU: every BLAS call of an op runs on one BLAS thread, and the op splits
its work over a small thread pool of ours.

Why: OpenBLAS's threads spin while they wait for work and for each other. Next to Numba's
threads, or on a machine whose cores other processes also use, that makes a small product
wait for a descheduled spinner: linear_backward_weight at LeNet's fc1 (12 M multiply-adds)
took 12-24 ms on two BLAS threads and 0.23 ms on one, on this 2-core machine under load. So
an op holds BLAS to one thread while it runs (threadpoolctl, restored after) and runs its
parts on threads of its own, which block instead of spinning; the Numba kernels on that
path release the GIL (nogil) and run serially inside their part. The one exception is a
single big product that cannot be split (a convolution of one large sample): BLAS keeps
its threads for it.

`parts()` says into how many parts to split; `run_parts(work, bounds)` runs
work(bounds[i], bounds[i + 1]) for every part and returns the results in part order. The
calling thread and the pool's take the next part not yet taken, so with more parts than
threads (the convolutions cut the batch in up to 8) a thread that the machine delays (a busy machine deschedules one now and then) holds
the others up by one part at most. Results depend on how the work is split (the part
bounds), never on which thread ran a part.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba as nb
from threadpoolctl import ThreadpoolController

# below this many multiply-adds a product runs whole on the calling thread: waking a
# helper thread costs about as much as the work
SPLIT_MIN_MACS = 1 << 20

_pool: ThreadPoolExecutor | None = None   # helpers for parts 1..
_pool_size = 0
_lock = threading.Lock()                  # one split op at a time holds the pool and BLAS's thread count
_blas = None                              # threadpoolctl's handles on the BLAS libraries NumPy loaded


def _forget_pool_after_fork():
    # a forked child inherits the pool object but not its threads: start a fresh one there
    global _pool, _pool_size, _lock
    _pool, _pool_size, _lock = None, 0, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool_after_fork)


def parts(count: int, macs: float) -> int:
    """How many parts to split `count` units of work (rows, columns) of `macs` multiply-adds
    in all into: one per Numba thread, at most one per unit, one when the work is small."""
    if macs < SPLIT_MIN_MACS:
        return 1
    return max(1, min(nb.get_num_threads(), count))


def bounds(count: int, n_parts: int) -> list[int]:
    """Contiguous, nearly equal parts of range(count): [b0, b1, ..., b_n_parts]."""
    return [count * i // n_parts for i in range(n_parts + 1)]


def _libraries() -> list:
    global _blas
    if _blas is None:  # the BLAS libraries loaded when the first op runs: NumPy's among them
        _blas = ThreadpoolController().select(user_api="blas").lib_controllers
    return _blas


def blas_threads() -> list[int]:
    """The thread count of each BLAS library the ops hold to one thread while they run."""
    return [lib.get_num_threads() for lib in _libraries()]


def _set_blas_threads(counts: list) -> list:
    """Give each BLAS library its count (a None or 0 count leaves it); returns the previous counts."""
    previous = blas_threads()
    for lib, n in zip(_blas, counts):
        if n:
            lib.set_num_threads(n)
    return previous


def run_parts(work, part_bounds: list[int], blas_threads: bool = False) -> list:
    """[work(b[0], b[1]), work(b[1], b[2]), ...], the parts taken in turn by the calling
    thread and the pool's (one per Numba thread in all), BLAS on one thread meanwhile
    (blas_threads=True, for a single part only: BLAS keeps its own threads). work must not
    call run_parts itself."""
    global _pool, _pool_size
    n_parts = len(part_bounds) - 1
    if n_parts == 1 and blas_threads:
        return [work(part_bounds[0], part_bounds[1])]
    helpers = min(nb.get_num_threads(), n_parts) - 1
    results, taken, next_part = [None] * n_parts, threading.Lock(), iter(range(n_parts))

    def take_parts():
        while True:
            with taken:
                i = next(next_part, None)
            if i is None:
                return
            results[i] = work(part_bounds[i], part_bounds[i + 1])

    with _lock:
        if _pool_size < helpers:  # created on first use, grown if Numba's thread count grows
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=helpers, thread_name_prefix="engine-cpu")
            _pool_size = helpers
        previous = _set_blas_threads([1] * len(_libraries()))
        try:
            futures = [_pool.submit(take_parts) for _ in range(helpers)]
            try:
                take_parts()
            finally:
                for f in futures:  # every part ends before BLAS is reset; a part's error is raised
                    f.result()
            return results
        finally:
            _set_blas_threads(previous)
