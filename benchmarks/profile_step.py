"""Where a training step's time goes, node by node, for the engine tree you name:

    python benchmarks/profile_step.py [ENGINE_TREE] [STEPS] [MODEL BATCH]

ENGINE_TREE is a checkout of this repository (default: this one), so that an older commit can
be profiled with today's method, e.g. `git worktree add /tmp/before <commit>` and then
`python benchmarks/profile_step.py /tmp/before`. LeNet at batch 256 unless MODEL BATCH say
otherwise (e.g. `alexnet 16`), SGD with momentum 0.9, synthetic data; prints JSON: each node's median milliseconds (engine.measure.step_profile, the profile
that `python -m engine bench --suite train` prints) and the median step.
"""
from __future__ import annotations

import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def main(argv: list) -> int:
    tree = Path(argv[0]).resolve() if argv else HERE
    steps = int(argv[1]) if len(argv) > 1 else 30
    model, batch = (argv[2], int(argv[3])) if len(argv) > 3 else ("lenet", 256)
    sys.path.insert(0, str(tree))  # `engine` is the named tree's ...
    import numpy as np
    from engine.executor import Executor
    from engine.models import MODELS
    from engine.optim import SGD
    # ... and the method is this tree's, loaded by its path (an older tree has no step_profile)
    spec = importlib.util.spec_from_file_location("profile_method", HERE / "engine" / "measure.py")
    method = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(method)

    rng = np.random.default_rng(0)
    build, input_shape = MODELS[model]
    x = rng.standard_normal((batch,) + tuple(input_shape)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    ex = Executor(build(num_classes=10), input_shape, optimizer=SGD(lr=0.01, momentum=0.9))
    rows = method.step_profile(ex, x, y, steps)
    ex.train_step(x, y)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        ex.train_step(x, y)
        times.append(time.perf_counter() - start)
    print(json.dumps({"tree": str(tree), "model": model, "batch": batch, "rows": rows, "step_ms": 1e3 * statistics.median(times)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
