"""The CLI says when Numba compiles (engine.cpu.compiling), and says nothing on a cache hit."""
from __future__ import annotations

import numba
import numpy as np

from engine.cpu.compiling import report_compilation


def test_compiling_a_kernel_is_reported_once_with_its_count():
    @numba.njit  # no cache: compiled in this test whatever ran before
    def inner(x):
        return x * 2.0

    @numba.njit
    def outer(x):
        return inner(x) + 1.0

    lines = []
    with report_compilation(log=lines.append):
        outer(np.float32(1.0))
        outer(np.float32(2.0))   # compiled already: nothing new
    assert len(lines) == 2, lines
    assert lines[0].startswith("compiling the CPU kernels")
    assert lines[1].startswith("compiled 1 CPU kernel in")  # inner compiles inside outer: one kernel


def test_nothing_is_said_when_nothing_compiles():
    @numba.njit
    def f(x):
        return x + 1

    f(1)
    lines = []
    with report_compilation(log=lines.append):
        f(2)
    assert lines == []
