"""Serial and parallel twins of every elementwise/reduction Numba kernel.

Waking the thread pool costs more than it saves on small arrays, and on a busy machine a
parallel region can wait a whole scheduler slice for a descheduled worker; PyTorch uses
the same grain size. Shared by every engine.cpu family.
"""
from __future__ import annotations

import hashlib
import marshal
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
        return _Pair(njit(parallel=True, cache=True, **self.options)(function),
                     njit(cache=True, **self.options)(_copy(function, function.__name__ + "_serial")))


def specialize(template, name: str, **functions) -> "_Pair":
    """kernel_pair of a copy of `template` in which the global names `functions` are these
    Python functions, compiled by Numba: one generic kernel serves every row of a table
    (engine.cpu.activation). Numba caches a copy by its name and does not look at the
    functions it calls, so the name carries a digest of their code and of the files they
    and this one come from: editing a row, or how it is compiled, compiles it again."""
    digest = hashlib.sha1()
    for fn in functions.values():
        digest.update(marshal.dumps(fn.__code__))
    for path in sorted({fn.__code__.co_filename for fn in functions.values()} | {__file__}):
        with open(path, "rb") as source:
            digest.update(source.read())
    copy = _copy(template, f"{template.__name__}_{name}_{digest.hexdigest()[:10]}",
                 {k: njit(inline="always")(fn) for k, fn in functions.items()})
    return kernel_pair()(copy)


def _copy(function, name: str, extra_globals: dict | None = None):
    globals_ = function.__globals__ if extra_globals is None else {**function.__globals__, **extra_globals}
    twin = types.FunctionType(function.__code__, globals_, name, function.__defaults__, function.__closure__)
    twin.__qualname__ = name
    return twin


class _Pair:
    def __init__(self, parallel, serial):
        self.parallel, self.serial = parallel, serial

    def __call__(self, *args):
        kernel = self.serial if args[0].size < PARALLEL_MIN else self.parallel
        return kernel(*args)
