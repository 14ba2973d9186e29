"""Serial and parallel twins of every elementwise/reduction Numba kernel.

Waking the thread pool costs more than it saves on small arrays, and on a busy machine a
parallel region can wait a whole scheduler slice for a descheduled worker; PyTorch uses
the same grain size. Shared by every engine.cpu family.
"""
from __future__ import annotations

import types

from numba import njit

# below this many elements (in the kernel's first argument) a kernel runs on one thread
PARALLEL_MIN = 1 << 15


class kernel_pair:
    """Decorator: compile a prange kernel as ``.parallel`` and as ``.serial`` (where prange
    is plain range); calling it picks by the size of the first argument.

    The serial twin is a copy of the function under its own name, because Numba's cache
    keys a function by name and bytecode, not by its compile options."""

    def __init__(self, **options):
        self.options = options

    def __call__(self, function):
        twin = types.FunctionType(function.__code__, function.__globals__, function.__name__ + "_serial",
                                  function.__defaults__, function.__closure__)
        twin.__qualname__ = function.__qualname__ + "_serial"
        return _Pair(njit(parallel=True, cache=True, **self.options)(function),
                     njit(cache=True, **self.options)(twin))


class _Pair:
    def __init__(self, parallel, serial):
        self.parallel, self.serial = parallel, serial

    def __call__(self, *args):
        kernel = self.serial if args[0].size < PARALLEL_MIN else self.parallel
        return kernel(*args)
