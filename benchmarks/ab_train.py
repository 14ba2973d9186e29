"""Two engine trees' training steps, and PyTorch's, timed turn by turn on the CPU:

    python benchmarks/ab_train.py BEFORE_TREE AFTER_TREE MODEL BATCH [REPEATS] [SECONDS]

e.g. `git worktree add /tmp/before <commit>` and then
`python benchmarks/ab_train.py /tmp/before . alexnet 16`. Why: on a shared 2-core machine
two bench runs 45 minutes apart differed by 40% for the same code, so a before/after figure
needs both in one run. Each tree's step (SGD with momentum, synthetic data, as
`python -m engine bench --suite train`) lives in a process of its own, waiting on a pipe
while the others run; each repeat asks the three for a burst of SECONDS in turn (the order
flipping every repeat) and the ratios are the medians of the per-repeat ratios.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import sys
from pathlib import Path


def _worker(tree, model, batch, conn):
    if tree is not None:
        sys.path.insert(0, tree)
    from engine.bench_train import images_per_second, our_train_step, torch_train_step
    if tree is None:
        step = torch_train_step(model, batch, "cpu")
    else:
        import engine
        assert engine.__file__.startswith(tree), f"imported {engine.__file__}, not the tree {tree}"
        step = our_train_step(model, batch, "cpu")
    for _ in range(3):  # compilation and first-touch outside the timing
        step()
    conn.send("ready")
    while (seconds := conn.recv()) is not None:
        conn.send(images_per_second(step, batch, seconds, warmup=1))


def main(argv: list) -> int:
    if len(argv) < 4:
        print(__doc__.split("\n\n")[0], file=sys.stderr)
        return 2
    before, after = (str(Path(t).resolve()) for t in argv[:2])
    model, batch = argv[2], int(argv[3])
    repeats = int(argv[4]) if len(argv) > 4 else 9
    seconds = float(argv[5]) if len(argv) > 5 else (1.5 if model.startswith("alexnet") else 0.5)
    ctx = mp.get_context("spawn")  # a fresh interpreter per tree: no engine module shared
    trees = {"before": before, "after": after, "torch": None}
    conns = {}
    for label, tree in trees.items():
        mine, theirs = ctx.Pipe()
        ctx.Process(target=_worker, args=(tree, model, batch, theirs), daemon=True).start()
        theirs.close()  # the child's end lives in the child alone: if it dies, recv() raises EOFError
        conns[label] = mine
    for conn in conns.values():
        assert conn.recv() == "ready"
    rates = {label: [] for label in trees}
    order = list(trees)
    for r in range(repeats):
        for label in (order if r % 2 == 0 else order[::-1]):
            conns[label].send(seconds)
            rates[label].append(conns[label].recv())
    for conn in conns.values():
        conn.send(None)

    def ratio(a, b):
        return statistics.median(x / y for x, y in zip(rates[a], rates[b]))

    med = {label: statistics.median(v) for label, v in rates.items()}
    print(f"{model} batch {batch}: images/s before {med['before']:.0f}, after {med['after']:.0f}, "
          f"PyTorch {med['torch']:.0f}; after/before x{ratio('after', 'before'):.2f}, "
          f"before/PyTorch x{ratio('before', 'torch'):.2f}, after/PyTorch x{ratio('after', 'torch'):.2f} "
          f"(medians of {repeats} turn-by-turn ratios; load average {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
