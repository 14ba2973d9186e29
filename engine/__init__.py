"""engine: a small deep learning engine whose every kernel is its own.

NumPy float64 references define each op (engine.reference), Numba kernels run it on
the CPU (engine.cpu), hand-written CUDA kernels on the GPU (kernels/, engine.cuda);
engine.backend is the one place that picks among them.
"""
import os as _os

# Numba's parallel loops run on OpenMP threads, which by default spin while waiting for
# work. Between our parallel regions come BLAS calls with threads of their own, and any
# other busy process on the machine: spinning threads then steal the cores those need
# (measured on 2 cores under load: a LeNet step took 756 ms spinning, 56 ms passive).
# Set before Numba starts its thread pool; a user's own setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Under mpiexec, several ranks share a machine's cores: each gets its share of threads
# (ENGINE_THREADS; engine.distributed), set before NumPy's BLAS and Numba start theirs.
from engine.distributed import pin_threads as _pin_threads  # noqa: E402  (imports nothing heavy)

_pin_threads()

from engine.version import __version__  # noqa: E402,F401  (after the environment is set)


def __getattr__(name):
    """engine.save_model / engine.load_model, imported on first use (PEP 562): importing
    engine stays cheap, and a model file is one call away."""
    if name in ("save_model", "load_model"):
        from engine import modelfile
        return getattr(modelfile, name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
