"""Data-parallel training across processes and GPUs, on MPI (mpi4py) and NCCL (cupy.cuda.nccl).

    mpiexec -n 4 python -m engine train alexnet --data folder:/data/imgs --batch-size 256

Every rank (process) holds the whole model. At the start -- and after a resume -- rank 0's
parameters, batch-norm buffers, optimizer state and step are broadcast to all. Each step,
every rank reads the same data set, shuffled with the same seed, and takes its own slice of
the global batch (engine.data.DataLoader's ``shard``); it runs forward and backward on that
slice, then one all-reduce of the flat gradient array (the executor keeps every gradient
in one) gives every rank the gradient of the global batch, and every rank applies the same
optimizer update. So the run does not depend on the number of ranks, with two documented
exceptions:

* the loss is the mean over a rank's own slice, so a rank's gradient is scaled by its
  share of the global batch (1/N, or its rows' share of a short last batch) before the
  summing all-reduce: the sum is then exactly the global batch's mean gradient;
* batch norm normalises with each rank's own batch statistics and each rank keeps its own
  running statistics (PyTorch DDP's default, not SyncBatchNorm); evaluation and
  checkpoints use rank 0's, which are what DDP's buffer broadcast gives too. Dropout masks
  differ per rank: the rank joins the (seed, step) that keys them.

The reduction: on the CPU ``MPI.Allreduce`` in place on the NumPy array; on GPUs one NCCL
communicator per run (its unique id broadcast over MPI), ``allReduce`` in place on the CuPy
array on CuPy's current stream, where the engine launches every kernel, so nothing waits for
the host. Where NCCL cannot be used (no NCCL library, or several ranks sharing one GPU,
which NCCL refuses) the gradient is staged through pinned host memory and reduced by MPI,
and rank 0 says so once. ENGINE_GPU_REDUCE=nccl|mpi forces one way (auto by default).

Failure: ``run_command`` runs a CLI command on every rank, with the CLI's policy for what an
error prints and its exit code (engine.cli). An error raised before the ranks first talk to
each other (bad options, a missing file) is gathered at that first exchange, and rank 0
prints it -- once when every rank met it, else ``error: rank R of N: ...`` for each rank
that did -- and every rank exits cleanly. An error after that (or a rank that dies) cannot
be waited for: the failing rank prints ``error: rank R of N: ...`` and calls MPI_Abort with
the error's exit code, which ends every rank -- never a hang. Only rank 0 writes
checkpoints, and it writes them atomically, so an abort leaves the previous one whole.

Threads: under a launcher each rank gets its share of the machine's cores (ENGINE_THREADS,
default cores // ranks on this machine, at least 1) for Numba, OpenMP and BLAS, so that
2 ranks on 2 cores run one thread each. engine/__init__.py calls ``pin_threads`` before
NumPy or Numba load, which is why this module imports nothing heavy at its top.

A single process (no launcher) needs no MPI at all: ``world()`` is None and nothing here runs.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
import warnings

# Environment variables that MPI launchers set in every process they start, giving the
# world size: MPICH's and Intel MPI's hydra and Slurm's PMI (PMI_SIZE), Open MPI
# (OMPI_COMM_WORLD_SIZE). PMIx launchers set PMIX_RANK without a size.
_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
_RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")
_LOCAL_SIZE_VARIABLES = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE")
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
GPU_REDUCE = ("auto", "nccl", "mpi")
ABORT_GRACE_S = 2.0  # a rank other than 0 waits this long before aborting: see _abort


def _env_int(names, environ=os.environ) -> int | None:
    for name in names:
        try:
            return int(environ[name])
        except (KeyError, ValueError):
            continue
    return None


def launched(environ=os.environ) -> bool:
    """True in a process started by an MPI launcher (mpiexec, mpirun, srun)."""
    return any(name in environ for name in _SIZE_VARIABLES + _RANK_VARIABLES)


def launcher_rank(environ=os.environ) -> int:
    """This process's rank as the launcher numbered it (0 outside a launcher)."""
    return _env_int(_RANK_VARIABLES, environ) or 0


def thread_count(environ=os.environ) -> int:
    """Threads per rank: ENGINE_THREADS, else this machine's cores shared among the ranks on
    it (as many as the launcher says, else all of them), at least 1."""
    given = environ.get("ENGINE_THREADS", "")
    if given.isdigit() and int(given) >= 1:
        return int(given)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    here = _env_int(_LOCAL_SIZE_VARIABLES, environ) or _env_int(_SIZE_VARIABLES, environ) or 1
    return max(1, cores // here)


def pin_threads(environ=os.environ) -> int | None:
    """Under a launcher: the thread count of every threading layer (Numba, OpenMP, BLAS) set
    to thread_count(), before they start; a variable the user set wins unless ENGINE_THREADS
    is set too. Returns the count, or None outside a launcher (nothing changed)."""
    if not launched(environ):
        return None
    threads = thread_count(environ)
    for name in _THREAD_VARIABLES:
        if "ENGINE_THREADS" in environ:
            environ[name] = str(threads)
        else:
            environ.setdefault(name, str(threads))
    return threads


# ---------------------------------------------------------------------------------------
# The communicator.

class PeerFailed(Exception):
    """Another rank failed before the ranks first talked: errors holds each rank's (exit code,
    line), or None."""

    def __init__(self, errors: list):
        super().__init__("; ".join(f"rank {r}: {e[1]}" for r, e in enumerate(errors) if e))
        self.errors = errors


class Communicator:
    """This process's place among the ranks of an MPI run, and the collectives a training
    run needs: broadcast_state (rank 0's state to all), average_gradients (the one
    all-reduce of a step), sum (a few host numbers), bcast (a Python object from rank 0).

    The first collective any of them makes is a check-in (started): every rank says whether
    it got there without an error, so that an error some ranks met while setting up ends
    every rank cleanly instead of leaving the others waiting (run_command)."""

    def __init__(self, mpi, comm):
        self.MPI, self.mpi = mpi, comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        node = comm.Split_type(mpi.COMM_TYPE_SHARED)  # the ranks on this machine
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()
        self.started = False
        self.gpu_reduce = None         # "nccl" or "host" once attached to a GPU executor
        self._nccl = self._pinned = None
        self.allreduce_seconds, self.allreduces = 0.0, 0  # time in average_gradients (host view)

    def __repr__(self):
        return f"Communicator(rank {self.rank} of {self.size}, {self.local_size} on this machine)"

    # --- the check-in -------------------------------------------------------------------
    def check_in(self, error=None) -> list:
        """Every rank's error ((exit code, line), or None where it has none), gathered on every rank."""
        errors = self.mpi.allgather(error)
        self.started = True
        return errors

    def _start(self) -> None:
        if not self.started:
            errors = self.check_in(None)
            if any(errors):
                raise PeerFailed(errors)

    # --- collectives --------------------------------------------------------------------
    def bcast(self, obj):
        """obj as rank 0 has it, on every rank (pickled: small things only)."""
        self._start()
        return self.mpi.bcast(obj, root=0)

    def sum(self, values):
        """The sum over ranks of a few host numbers, as float64, on every rank."""
        import numpy as np
        self._start()
        buf = np.array(values, dtype=np.float64)
        self.mpi.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        return buf

    def use_device(self, device: str) -> None:
        """Before an executor allocates anything: a rank on the GPU takes its own GPU, the
        local rank's (several ranks share one when a machine has fewer GPUs than ranks)."""
        if device == "cuda":
            import cupy
            cupy.cuda.Device(self.local_rank % cupy.cuda.runtime.getDeviceCount()).use()

    def attach(self, ex) -> None:
        """Join an executor to the run (Executor(comm=...) calls this): check that every rank
        built the same model on the same kind of device, set up the GPU reduction, and give
        every rank rank 0's state."""
        self._start()
        mine = (ex.device, int(ex.params_flat.size), int(ex.trainable_end), tuple(sorted(ex.opt_state)))
        every = self.mpi.allgather(mine)
        if any(other != every[0] for other in every):
            differ = ", ".join(f"rank {r}: {d} with {n:,} parameters ({t:,} trainable), optimizer state {s}"
                               for r, (d, n, t, s) in enumerate(every))
            raise RuntimeError(f"distributed: every rank must build the same model on the same kind of device; {differ}")
        if ex.device == "cuda":
            self._setup_gpu(ex.grads_flat)
        self.broadcast_state(ex)

    def _setup_gpu(self, grads) -> None:
        """NCCL when every rank can use it, else pinned host memory for MPI (see the docstring)."""
        import cupy
        mode = gpu_reduce_mode()
        why_not = _nccl_unusable() if mode != "mpi" else "ENGINE_GPU_REDUCE=mpi"
        gpu = (self.MPI.Get_processor_name(), cupy.cuda.Device().pci_bus_id)
        every = self.mpi.allgather((why_not, gpu))  # NCCL on every rank or on none
        why_not = next((f"rank {r}: {w}" if self.size > 1 else w for r, (w, _) in enumerate(every) if w), None)
        gpus = [g for _, g in every]
        shared = sorted({tuple(r for r, h in enumerate(gpus) if h == g) for g in gpus if gpus.count(g) > 1})
        if why_not is None and shared:  # NCCL refuses two ranks on one GPU
            host, bus = gpus[shared[0][0]]
            why_not = f"ranks {', '.join(map(str, shared[0]))} share the GPU {bus} of {host}, and NCCL needs one per rank"
        if why_not is None:
            from cupy.cuda import nccl
            uid = nccl.get_unique_id() if self.rank == 0 else None
            self._nccl = nccl.NcclCommunicator(self.size, self.mpi.bcast(uid, root=0), self.rank)
            self.gpu_reduce = "nccl"
            return
        if mode == "nccl":
            raise RuntimeError(f"ENGINE_GPU_REDUCE=nccl, but NCCL cannot be used: {why_not}")
        import cupyx
        self._pinned = cupyx.empty_pinned(grads.shape, grads.dtype)
        self.gpu_reduce = "host"
        if self.rank == 0:
            print(f"distributed: NCCL is not used ({why_not}): gradients are staged through host memory "
                  f"and reduced by MPI", file=sys.stderr, flush=True)

    def broadcast_state(self, ex) -> None:
        """Rank 0's parameters, optimizer state, buffers, step, learning rate and seed on every rank."""
        self._start()
        arrays = [ex.params_flat] + [ex.opt_state[k] for k in sorted(ex.opt_state)]
        arrays += [ex.buffers_of(layer)[k] for layer in ex.layers for k in sorted(ex.buffers_of(layer))]
        for a in arrays:
            self._broadcast_array(a)
        ex.step, ex.lr, ex.seed = self.mpi.bcast((ex.step, ex.lr, ex.seed), root=0)

    def _broadcast_array(self, a) -> None:
        if self._nccl is not None:
            import cupy
            from cupy.cuda import nccl
            assert a.dtype == "float32" and a.flags.c_contiguous
            self._nccl.broadcast(a.data.ptr, a.data.ptr, a.size, nccl.NCCL_FLOAT32, 0,
                                 cupy.cuda.get_current_stream().ptr)
        elif self.gpu_reduce == "host":
            host = a.get()
            self.mpi.Bcast(host, root=0)
            a.set(host)
        else:
            self.mpi.Bcast(a, root=0)

    def average_gradients(self, grads, share: float) -> None:
        """grads (the flat gradient of this rank's slice, a mean over its rows; the executor
        passes the trainable head of its flat array) becomes the global batch's mean gradient
        on every rank: scaled by share (this rank's rows over the global batch's), then summed
        over the ranks by one all-reduce, in place."""
        start = time.perf_counter()
        if share != 1.0:
            grads *= grads.dtype.type(share)  # NumPy or CuPy (on its current stream), in place
        if self._nccl is not None:
            import cupy
            from cupy.cuda import nccl
            self._nccl.allReduce(grads.data.ptr, grads.data.ptr, grads.size, nccl.NCCL_FLOAT32, nccl.NCCL_SUM,
                                 cupy.cuda.get_current_stream().ptr)
        elif self._pinned is not None:
            host = self._pinned[:grads.size]  # grads: the trainable head of the flat gradient
            grads.get(out=host)  # waits for backward to finish
            self.mpi.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
            grads.set(host)
        else:
            self.mpi.Allreduce(self.MPI.IN_PLACE, grads, op=self.MPI.SUM)
        self.allreduce_seconds += time.perf_counter() - start
        self.allreduces += 1


def _nccl_unusable() -> str | None:
    """Why this rank cannot use NCCL (no library), or None when it can."""
    try:
        from cupy.cuda import nccl
    except ImportError as e:
        return f"cupy.cuda.nccl does not import: {e}"
    if not getattr(nccl, "available", True):
        return "CuPy finds no NCCL library (pip install nvidia-nccl-cu12, or -cu13 to match CuPy)"
    return None


def gpu_reduce_mode() -> str:
    """ENGINE_GPU_REDUCE: auto (NCCL where every rank can use it), nccl (NCCL or an error) or
    mpi (always through host memory)."""
    mode = os.environ.get("ENGINE_GPU_REDUCE", "auto")
    if mode not in GPU_REDUCE:
        raise ValueError(f"ENGINE_GPU_REDUCE must be one of {', '.join(GPU_REDUCE)}, got {mode!r}")
    return mode


def mpiexec() -> str | None:
    """The mpiexec that goes with mpi4py's MPI: the mpich wheel's, beside python, else the
    first on PATH."""
    import shutil
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return beside if os.path.exists(beside) else shutil.which("mpiexec")


_world: Communicator | None = None


def world() -> Communicator | None:
    """This process's Communicator when an MPI launcher started it, else None. A RuntimeError
    names the extra to install when mpi4py is missing, and says so when the launcher's
    processes are not one MPI world (an mpiexec of another MPI than mpi4py's)."""
    global _world
    if _world is not None or not launched():
        return _world
    expected = _env_int(_SIZE_VARIABLES)
    try:
        import mpi4py
    except ImportError:
        raise RuntimeError(f"started by an MPI launcher ({expected or 'several'} processes), but mpi4py is not "
                           f"installed: pip install 'engine[dist]' (mpi4py and MPICH)") from None
    mpi4py.rc.thread_level = "funneled"  # only the main thread calls MPI
    from mpi4py import MPI
    comm = Communicator(MPI, MPI.COMM_WORLD)
    if expected is not None and comm.size != expected:
        raise RuntimeError(f"the launcher started {expected} processes but MPI sees {comm.size}: its mpiexec is "
                           f"not the one of mpi4py's MPI ({MPI.Get_library_version().splitlines()[0].strip()}); "
                           f"use {mpiexec()}")
    _world = comm
    return comm


# ---------------------------------------------------------------------------------------
# Checks of a training command's options against the world, before any work.

def check_batch(name: str, batch_size: int, comm: Communicator | None) -> None:
    if comm is not None and batch_size % comm.size:
        raise ValueError(f"{name} is the global batch, split evenly across the {comm.size} processes, so it must be "
                         f"divisible by {comm.size}; got {batch_size}")


def checkpoint_world_size(path: str) -> int | None:
    """The number of processes that wrote the checkpoint at path (1 for one written before
    runs had several), or None when there is none; read from its metadata alone."""
    from engine.checkpoint import read_metadata
    if not os.path.isfile(path):
        return None
    return int(read_metadata(path).get("world_size", 1))


def check_resume(name: str, path: str | None, size: int) -> None:
    """A run resumes with the world size that wrote its checkpoint: batch-norm statistics and
    dropout masks are per rank, so another count would not continue the same run. Each rank
    reads the checkpoint where it sees one (only rank 0 needs to: it is the one that resumes)."""
    saved = checkpoint_world_size(path) if path else None
    if saved is not None and saved != size:
        raise ValueError(f"{name}: {path} was written by a run on {saved} process(es) and this run has {size}; "
                         f"resume with the same number (mpiexec -n {saved}"
                         f"{', or without mpiexec' if saved == 1 else ''}): batch-norm statistics and dropout "
                         f"masks are per process, so another number would not continue the same run")


# ---------------------------------------------------------------------------------------
# Running a command on every rank.

@contextlib.contextmanager
def rank0_prints():
    """Under a launcher, what the block prints only on rank 0: every rank parses the same
    command line, so argparse's one error line (or --help) is said once."""
    if not launched() or launcher_rank() == 0:
        yield
        return
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(devnull):
        yield


def _on_rank(line: str, rank: int, size: int) -> str:
    """'error: message' -> 'error: rank R of N: message' (and 'internal error: ...' alike)."""
    head, _, message = line.partition(": ")
    return f"{head}: rank {rank} of {size}: {message}"


def _report(errors: list, size: int) -> None:
    """Rank 0's lines for the errors met while setting up (errors: each rank's (code, line) or
    None): the line once when every rank met the same, else one per failing rank."""
    failed = [(r, e[1]) for r, e in enumerate(errors) if e]
    if len(failed) == size and len({line for _, line in failed}) == 1:
        print(failed[0][1], file=sys.stderr)
        return
    for r, line in failed:
        print(_on_rank(line, r, size), file=sys.stderr)


def _abort(comm: Communicator, code: int, line: str, trace: bool) -> None:
    """Print this rank's error and end every rank. A rank other than 0 waits a moment
    first: when every rank meets the same error at once (a NaN loss, seen by all), rank 0's
    abort ends the others before they print, and the error is told once."""
    if comm.rank != 0:
        time.sleep(ABORT_GRACE_S)
    if trace:
        traceback.print_exc()
    sys.stdout.flush()
    print(_on_rank(line, comm.rank, comm.size), file=sys.stderr, flush=True)
    comm.mpi.Abort(code)
    os._exit(code)  # MPI_Abort may return before the launcher ends this process


def run_command(func, args) -> int:
    """Run a CLI command (func(args)) on this rank of an MPI run: only rank 0 prints to
    stdout; an error is reported with the CLI's policy (engine.cli: its line and exit code)
    and ends the run as the module docstring says."""
    import engine.cli as cli  # by its full name: engine/__init__ imports this module
    debug = cli.debugging(sys.argv[1:])
    if launcher_rank() != 0:  # only rank 0 prints (and shows progress: fit): every rank decides alike
        sys.stdout = open(os.devnull, "w")
        warnings.simplefilter("ignore")
    else:
        sys.stdout.reconfigure(line_buffering=True)  # a pipe to mpiexec: lines as they come
    try:
        comm = world()
    except RuntimeError as e:  # no mpi4py: every rank knows; rank 0 says it
        if launcher_rank() == 0:
            print(f"error: {e}", file=sys.stderr)
        return cli.EXIT_USER
    try:
        threads = os.environ.get("ENGINE_THREADS")
        if threads is not None and not (threads.isdigit() and int(threads) >= 1):
            raise ValueError(f"ENGINE_THREADS must be a positive integer (threads per process), got {threads!r}")
        gpu_reduce_mode()
        if args.command != "train" and comm.size > 1:
            raise ValueError(f"{args.command} runs in one process; under mpiexec only train runs data-parallel, "
                             f"got {comm.size} processes")
        return func(args)
    except PeerFailed as e:  # another rank failed while setting up; this one did not
        if comm.rank == 0:
            _report(e.errors, comm.size)
        return max(code for code, _ in filter(None, e.errors))
    except (Exception, KeyboardInterrupt) as e:
        code, line = cli.describe(e)
        trace = cli.with_traceback(code, debug)
        if comm.started:  # the others may be waiting on this rank in a collective: end them all
            _abort(comm, code, line, trace)
        if trace:
            traceback.print_exc()
        errors = comm.check_in((code, line))
        if comm.rank == 0:
            _report(errors, comm.size)
        return code
