"""Saying when Numba compiles, so a first run is not a silent minute at 0%.

Numba compiles each CPU kernel the first time a run calls it with new argument types, and
keeps the machine code in its cache (`cache=True`: __pycache__ beside the source, or
NUMBA_CACHE_DIR), so later runs load it in milliseconds. Only the kernels a run calls are
compiled. A first LeNet run on 2 cores spent 9.6 s compiling its 23 kernels, inside its first
step (2026-12-08, `python -m engine train lenet --device cpu --epochs 1`, a fresh
NUMBA_CACHE_DIR); `report_compilation` says so while it happens, through Numba's event API
("numba:compile" fires on a real compilation only, never on a cache hit).
"""
from __future__ import annotations

import contextlib
import time

from numba.core import event


class _Reporter(event.Listener):
    def __init__(self, log):
        self.log, self.depth, self.count, self.seconds, self.started = log, 0, 0, 0.0, None

    def on_start(self, ev):
        self.depth += 1
        if self.depth == 1:  # kernels called by a kernel compile inside it: count the outermost only
            if self.count == 0:
                self.log("compiling the CPU kernels this run uses (Numba; once: later runs load them "
                         "from its cache) ...")
            self.started = time.perf_counter()

    def on_end(self, ev):
        if self.depth == 1:
            self.count += 1
            self.seconds += time.perf_counter() - self.started
        self.depth -= 1


@contextlib.contextmanager
def report_compilation(log=print):
    """Within the block, log a line when Numba starts compiling kernels, and at the end how
    many it compiled and how long that took (nothing at all when every kernel came from the
    cache)."""
    reporter = _Reporter(log)
    with event.install_listener("numba:compile", reporter):
        try:
            yield reporter
        finally:
            if reporter.count:
                kernels = "kernel" if reporter.count == 1 else "kernels"
                log(f"compiled {reporter.count} CPU {kernels} in {reporter.seconds:.1f} s (cached for later runs)")
