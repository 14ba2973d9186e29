"""Serial and parallel twins of every elementwise/reduction Numba kernel.

Waking the thread pool costs more than it saves on small arrays, and on a busy machine a
parallel region can wait a whole scheduler slice for a descheduled worker; PyTorch uses
the same grain size. Shared by every engine.cpu family.

Importing this module also makes the vectorisable math of engine.cpu.vecmath callable from
any kernel (inlined). Numba's cache keys a kernel by its own file only, so a kernel that
calls vecmath carries a digest of vecmath.py in its name: editing the helpers recompiles it.
"""
from __future__ import annotations

import hashlib
import marshal
import types

from numba import njit
from numba.extending import register_jitable

from engine.cpu import vecmath

for _fn in vecmath.FUNCTIONS:
    register_jitable(inline="always")(_fn)

# the compile options of kernels that inline vecmath (see specialize)
VECTOR_MATH = dict(error_model="numpy", fastmath={"contract"})

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
        name = function.__name__
        if "vecmath" in function.__code__.co_names:
            name = f"{name}_{_digest([], [vecmath.__file__])}"
        parallel = function if name == function.__name__ else _copy(function, name)
        return _Pair(njit(parallel=True, cache=True, **self.options)(parallel),
                     njit(cache=True, **self.options)(_copy(function, name + "_serial")))


def specialize(template, name: str, **functions) -> "_Pair":
    """kernel_pair of a copy of `template` in which the global names `functions` are these
    Python functions, compiled by Numba: one generic kernel serves every row of a table
    (engine.cpu.activation). Numba caches a copy by its name and does not look at the
    functions it calls, so the name carries a digest of their code and of the files they,
    this one and vecmath come from: editing a row, or how it is compiled, compiles it again.

    error_model="numpy": a float division by zero gives inf or NaN as in NumPy instead of
    raising; Python's check is a branch per division that keeps LLVM from vectorising.
    fastmath={"contract"}: multiply-adds fuse (see engine.cpu.vecmath); nothing reorders."""
    files = {fn.__code__.co_filename for fn in functions.values()} | {__file__, vecmath.__file__}
    copy = _copy(template, f"{template.__name__}_{name}_{_digest([fn.__code__ for fn in functions.values()], files)}",
                 {k: njit(inline="always")(fn) for k, fn in functions.items()})
    return kernel_pair(**VECTOR_MATH)(copy)


def _digest(codes, files) -> str:
    digest = hashlib.sha1()
    for code in codes:
        digest.update(marshal.dumps(code))
    for path in sorted(files):
        with open(path, "rb") as source:
            digest.update(source.read())
    return digest.hexdigest()[:10]


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
