"""Data parallel across processes (engine.distributed), on the real thing: mpiexec from the
mpich wheel and mpi4py (the test extra installs both), started the way a user starts them.
Every launch runs under a timeout, and a run that outlives it fails the test: a hang must
never block CI.

The runs: tests/dist_worker.py (fit() on two ranks, every scenario in one launch) against
the same scenarios in this process; and `python -m engine train` under mpiexec for resume,
a failing rank and the user's mistakes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine import distributed
from engine.checkpoint import load_checkpoint
from engine.data import Augment, DataLoader, synthetic
from engine.tolerances import assert_close, tol
from engine.training import fit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dist_worker as W  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MPIEXEC = distributed.mpiexec()  # the mpich wheel's, beside python (the test extra installs it)
LAUNCH_TIMEOUT_S = 240  # one launch takes seconds; only a hang (or a machine stalled for minutes) reaches this

try:
    import mpi4py  # noqa: F401
    HAVE_MPI4PY = True
except ImportError:
    HAVE_MPI4PY = False
needs_mpi = pytest.mark.skipif(not HAVE_MPI4PY or MPIEXEC is None,
                               reason="needs mpi4py and an mpiexec (pip install -e '.[test]' installs both)")


def launch(args, cwd, n=None, extra_env=None, timeout=LAUNCH_TIMEOUT_S) -> subprocess.CompletedProcess:
    """`mpiexec -n N python ARGS` (plain `python ARGS` when n is None) with this checkout's
    engine; the whole process group is killed, and the test fails, if it outlives timeout."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", PYTHONUNBUFFERED="1",
               **(extra_env or {}))
    for name in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"):
        env.pop(name, None)  # a pytest itself started by a launcher: the child is not one of its ranks
    command = ([MPIEXEC, "-n", str(n)] if n is not None else []) + [sys.executable, *map(str, args)]
    p = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        pytest.fail(f"{' '.join(command)} hung: still running after {timeout} s\n{out[-3000:]}\n{err[-3000:]}")
    return subprocess.CompletedProcess(command, p.returncode, out, err)


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


# ---------------------------------------------------------------------------------------
# Two ranks against one process (tests/dist_worker.py).

@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Every scenario of dist_worker on 2 ranks: name -> [rank 0's outcome, rank 1's]. The
    kernels are compiled (and cached) in this process first, so the ranks only load them."""
    fit(W.make_executor("sgd"), W.make_loader("sgd"), 1, progress=False, log=lambda line: None)
    out = tmp_path_factory.mktemp("two_ranks")
    result = launch([ROOT / "tests" / "dist_worker.py", out], cwd=out, n=2)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {name: [dict(np.load(out / f"{name}-rank{r}.npz")) for r in (0, 1)] for name in W.SCENARIOS}


@needs_mpi
@pytest.mark.parametrize("name", ["sgd", "adam", "uneven", "empty", "frozen"])
def test_two_ranks_at_global_batch_64_reproduce_one_process(two_ranks, name):
    """sgd/adam: 10 steps, the loss of every step; uneven: short last batches split 16/17,
    with augmentation; empty: a last batch of one row, which rank 0 has no part of; frozen:
    the first layer frozen (only the trainable head of the flat gradient is reduced)."""
    _, epochs, _, _, _ = W.SCENARIOS[name]
    ex = W.make_executor(name)
    expected = W.outcome(ex, fit(ex, W.make_loader(name), epochs, progress=False, log=lambda line: None))
    rank0, rank1 = two_ranks[name]
    assert sorted(rank0) == sorted(expected)
    for key in expected:
        assert_close(rank0[key], expected[key], **tol("data_parallel"), what=f"{name} {key}")
        np.testing.assert_array_equal(rank1[key], rank0[key], err_msg=f"{name} {key}: the ranks differ")
    assert len(rank0["loss"]) == epochs
    if name == "frozen":  # the frozen layer kept its initial weights
        np.testing.assert_array_equal(rank0["param/0.Conv2d.weight"], W.outcome(W.make_executor(name))["param/0.Conv2d.weight"])


@needs_mpi
def test_batch_norm_normalises_with_each_ranks_own_statistics(two_ranks):
    """The documented behaviour (PyTorch DDP's default): each rank's batch norm uses its own
    slice's statistics and keeps its own running statistics, the gradients are averaged.
    Built here with two executors, one per slice: rank R matches executor R."""
    name, (_, epochs, _, _, _) = "batchnorm", W.SCENARIOS["batchnorm"]
    executors = [W.make_executor(name), W.make_executor(name)]
    loaders = [W.make_loader(name, (r, 2)) for r in (0, 1)]
    for _ in range(epochs):
        for (x0, y0), (x1, y1) in zip(*loaders):
            executors[0].compute_gradients(x0, y0)
            g0 = executors[0].grads_flat * np.float32(loaders[0].share)
            executors[1].compute_gradients(x1, y1)
            average = g0 + executors[1].grads_flat * np.float32(loaders[1].share)
            for ex in executors:
                ex.grads_flat[:] = average
                ex.apply_gradients()
    for rank, ex in enumerate(executors):
        expected = W.outcome(ex)
        for key in expected:
            assert_close(two_ranks[name][rank][key], expected[key], **tol("data_parallel"), what=f"rank {rank} {key}")
    stats = "buffer/1.BatchNorm2d.running_mean"
    assert np.abs(two_ranks[name][0][stats] - two_ranks[name][1][stats]).max() > 1e-3  # per rank, not shared
    one = W.make_executor(name)  # one process at batch 64 normalises over all 64: not what 2 ranks do
    fit(one, W.make_loader(name), epochs, progress=False, log=lambda line: None)
    assert np.abs(W.outcome(one)[stats] - two_ranks[name][0][stats]).max() > 1e-3


# ---------------------------------------------------------------------------------------
# The command line under mpiexec.

MODEL_FILE = '''
"""A small model with batch norm and dropout, and a tripwire: on rank FAIL_RANK it raises (or
with FAIL_HOW=kill dies) in training step FAIL_AT_STEP; with FAIL_IN_SETUP=R rank R raises
while the model is built."""
import os
from engine import distributed, nn


def rank():
    return distributed.world().rank if distributed.world() else 0


class Tripwire(nn.Flatten):
    steps = 0

    def forward(self, bk, n):
        if n.training:
            Tripwire.steps += 1
            if os.environ.get("FAIL_RANK") == str(rank()) and Tripwire.steps == int(os.environ["FAIL_AT_STEP"]):
                if os.environ.get("FAIL_HOW") == "kill":
                    os.kill(os.getpid(), 9)
                raise RuntimeError(f"tripwire: step {Tripwire.steps} on this rank")
        super().forward(bk, n)


def net(num_classes=10, in_channels=1):
    if os.environ.get("FAIL_IN_SETUP") == str(rank()):
        raise ValueError("this rank cannot build the model")
    return nn.Sequential(nn.Conv2d(in_channels, 4, 5, stride=2, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.MaxPool2d(2), Tripwire(), nn.Dropout(0.3), nn.Linear(4 * 6 * 6, num_classes))
net.input_shape = (1, 28, 28)
'''


def train_args(tmp_path, checkpoint, *more):
    model = tmp_path / "tripwire_model.py"
    if not model.exists():
        model.write_text(MODEL_FILE)
    return ["-m", "engine", "train", f"{model}:net", "--data", "synthetic", "--synthetic-size", "160",
            "--batch-size", "32", "--epochs", "3", "--val-split", "0.2", "--optimizer", "adam", "--device", "cpu",
            "--no-progress", "--checkpoint", str(tmp_path / checkpoint), *more]


@needs_mpi
def test_resume_under_two_ranks_reproduces_an_uninterrupted_run_and_a_failing_rank_ends_the_run(tmp_path):
    """Three runs of 3 epochs x 4 steps: uninterrupted; one whose rank 1 raises in step 7
    (epoch 2), which must end both ranks with the rank's message and leave epoch 1's
    checkpoint whole; its resume, which must end exactly where the uninterrupted run did."""
    full = launch(train_args(tmp_path, "full.npz", "--json", tmp_path / "full.json"), tmp_path, n=2)
    assert full.returncode == 0, full.stderr[-3000:]
    assert "data parallel: 2 processes, 16 images each per step" in full.stdout
    assert full.stdout.count("epoch 3/3") == 1  # rank 0 alone prints

    failed = launch(train_args(tmp_path, "cut.npz"), tmp_path, n=2, extra_env={"FAIL_RANK": "1", "FAIL_AT_STEP": "7"})
    assert failed.returncode != 0
    assert error_lines(failed) == ["error: rank 1 of 2: tripwire: step 7 on this rank"], failed.stderr[-3000:]
    assert load_checkpoint(tmp_path / "cut.npz")["epoch"] == 1  # written after epoch 1, untouched since

    resumed = launch(train_args(tmp_path, "cut.npz", "--resume", "--json", tmp_path / "resumed.json"), tmp_path, n=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "at epoch 1" in resumed.stdout
    a, b = load_checkpoint(tmp_path / "full.npz"), load_checkpoint(tmp_path / "cut.npz")
    assert a["epoch"] == b["epoch"] == 3 and a["world_size"] == b["world_size"] == 2
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        assert a["history"][key] == b["history"][key], key  # exactly
    for part in ("params", "buffers"):
        for key, value in a["executor"][part].items():
            np.testing.assert_array_equal(b["executor"][part][key], value, err_msg=key)
    for state, per_param in a["executor"]["optimizer"].items():
        for key, value in per_param.items():
            np.testing.assert_array_equal(b["executor"]["optimizer"][state][key], value, err_msg=f"{state} {key}")
    full_json, resumed_json = (json.loads((tmp_path / f).read_text()) for f in ("full.json", "resumed.json"))
    assert full_json["world_size"] == 2 and full_json["test"] == resumed_json["test"]

    # another number of processes is refused, before any work, in one line
    alone = launch(train_args(tmp_path, "full.npz", "--resume"), tmp_path)
    assert alone.returncode == 2
    assert error_lines(alone) == [
        f"error: --resume: {tmp_path / 'full.npz'} was written by a run on 2 process(es) and this run has 1; resume "
        "with the same number (mpiexec -n 2): batch-norm statistics and dropout masks are per process, so another "
        "number would not continue the same run"]


@needs_mpi
def test_a_rank_that_dies_ends_the_run(tmp_path):
    died = launch(train_args(tmp_path, "died.npz"), tmp_path, n=2,
                  extra_env={"FAIL_RANK": "0", "FAIL_AT_STEP": "6", "FAIL_HOW": "kill"})
    assert died.returncode != 0  # mpiexec ends the other rank, which waits in the all-reduce
    assert load_checkpoint(tmp_path / "died.npz")["epoch"] == 1


@needs_mpi
def test_the_users_mistakes_under_mpiexec_are_one_error_line(tmp_path):
    odd = launch(train_args(tmp_path, "x.npz", "--batch-size", "33"), tmp_path, n=2)
    assert odd.returncode == 2
    assert error_lines(odd) == ["error: --batch-size is the global batch, split evenly across the 2 processes, so "
                                "it must be divisible by 2; got 33"], odd.stderr[-3000:]
    assert not (tmp_path / "x.npz").exists()
    argparse = launch(train_args(tmp_path, "x.npz", "--epochs", "0"), tmp_path, n=2)  # every rank parses it
    assert argparse.returncode == 2
    assert error_lines(argparse) == ["error: train: argument --epochs: expected an integer >= 1, got 0 "
                                     "(see python -m engine train --help)"], argparse.stderr[-3000:]

    # one rank fails while setting up: that rank's error, once, and no rank waits for it
    setup = launch(train_args(tmp_path, "x.npz"), tmp_path, n=2, extra_env={"FAIL_IN_SETUP": "1"})
    assert setup.returncode == 2
    assert error_lines(setup) == ["error: rank 1 of 2: this rank cannot build the model"], setup.stderr[-3000:]

    # mpiexec without mpi4py: one line naming the extra to install
    no_mpi4py = launch(["-c", "import sys; sys.modules['mpi4py'] = None; from engine.__main__ import main; "
                        "sys.exit(main(['train', 'lenet']))"], tmp_path, n=2)
    assert no_mpi4py.returncode == 2
    assert error_lines(no_mpi4py) == [
        "error: started by an MPI launcher (2 processes), but mpi4py is not installed: "
        "pip install 'engine[dist]' (mpi4py and MPICH)"], no_mpi4py.stderr[-3000:]


# ---------------------------------------------------------------------------------------
# The parts that need no MPI.

def test_each_rank_takes_its_slice_of_every_global_batch_augmented_as_the_whole():
    x, y = synthetic(70, (1, 8, 8), 10, seed=0)
    x[:, 0, 0, 0] = np.arange(70)  # each image says which it is
    augment = Augment(shift=1, flip=True, seed=4)
    whole = list(DataLoader(x, y, 12, seed=3, augment=augment))
    shards = [list(DataLoader(x, y, 12, seed=3, augment=augment, shard=(r, 3))) for r in range(3)]
    for b, (xb, yb) in enumerate(whole):
        parts = [shards[r][b] for r in range(3)]
        np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), xb)
        np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), yb)
    assert [len(shards[r][-1][1]) for r in range(3)] == [3, 3, 4]  # 70 = 5 x 12 + 10
    with pytest.raises(ValueError, match="batch_size is the global batch, split evenly across 3 processes, so it "
                                         "must be divisible by 3; got 10"):
        DataLoader(x, y, 10, shard=(0, 3))
    with pytest.raises(ValueError, match="shard rank must be below the shard size 3, got 3"):
        DataLoader(x, y, 12, shard=(3, 3))


def test_threads_are_shared_among_the_ranks_of_a_machine_only_under_a_launcher():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    plain = {"OMP_NUM_THREADS": "7"}
    assert distributed.pin_threads(plain) is None and plain == {"OMP_NUM_THREADS": "7"}
    env = {"PMI_SIZE": "4", "PMI_RANK": "0", "MPI_LOCALNRANKS": "2", "OMP_NUM_THREADS": "7"}
    assert distributed.pin_threads(env) == max(1, cores // 2)
    assert env["NUMBA_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == str(max(1, cores // 2))
    assert env["OMP_NUM_THREADS"] == "7"  # the user's own setting stands
    env = {"OMPI_COMM_WORLD_SIZE": "64", "OMP_NUM_THREADS": "7", "ENGINE_THREADS": "3"}
    assert distributed.pin_threads(env) == 3 and env["OMP_NUM_THREADS"] == "3"  # ...unless ENGINE_THREADS says
    assert distributed.thread_count({"PMI_SIZE": "1000"}) == 1


def test_a_single_process_needs_no_mpi_and_refuses_a_checkpoint_of_two(tmp_path):
    assert distributed.world() is None or distributed.launched()
    distributed.check_batch("--batch-size", 33, None)  # one process: any batch
    from engine.checkpoint import save_checkpoint
    save_checkpoint(tmp_path / "two.npz", {"world_size": 2, "epoch": 1})
    assert distributed.checkpoint_world_size(str(tmp_path / "two.npz")) == 2
    with pytest.raises(ValueError, match=r"fit: resume: .* was written by a run on 2 process\(es\) and this run has 1"):
        distributed.check_resume("fit: resume", str(tmp_path / "two.npz"), 1)
    distributed.check_resume("fit: resume", str(tmp_path / "none.npz"), 1)  # nothing to resume yet


class _Rank:
    """A communicator stand-in: the rank (which keys the dropout masks) of 2, and what it was
    asked to reduce."""

    def __init__(self, rank):
        self.rank, self.size, self.reduced = rank, 2, []

    def use_device(self, device):
        pass

    def attach(self, ex):
        pass

    def average_gradients(self, grads, share):
        self.reduced.append((grads, share))


def test_dropout_masks_differ_per_rank_and_repeat_on_the_same_rank():
    from engine import nn
    from engine.executor import Executor
    from engine.optim import SGD
    x, y = synthetic(32, (1, 8, 8), 10, seed=0)

    def grads(rank):
        nn.manual_seed(2)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Dropout(0.5), nn.Linear(32, 10))
        ex = Executor(model, (1, 8, 8), optimizer=SGD(0.1), seed=7, comm=_Rank(rank))
        ex.compute_gradients(x, y)
        return ex.grads_flat.copy()

    np.testing.assert_array_equal(grads(0), grads(0))
    np.testing.assert_array_equal(grads(1), grads(1))
    assert not np.array_equal(grads(0), grads(1))  # another mask on rank 1


def test_a_step_makes_one_all_reduce_of_the_flat_gradient():
    from engine import nn
    from engine.executor import Executor
    from engine.optim import SGD
    x, y = synthetic(16, (1, 8, 8), 10, seed=0)
    nn.manual_seed(2)
    ex = Executor(nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)), (1, 8, 8),
                  optimizer=SGD(0.1), comm=_Rank(0))
    for _ in range(3):
        ex.train_step(x, y)
    assert len(ex.comm.reduced) == 3
    for grads, share in ex.comm.reduced:
        assert share == 0.5  # an equal share of the global batch: 1 / world size
        assert grads.ctypes.data == ex.grads_flat.ctypes.data  # the flat array itself, reduced in place
        assert grads.size == ex.trainable_end == ex.grads_flat.size  # every gradient at once
