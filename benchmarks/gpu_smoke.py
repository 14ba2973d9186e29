"""Every kernel launched once, at the small odd shapes of the op cards, through each CUDA
exposure: the program compute-sanitizer watches in benchmarks/gpu_acceptance.sh (stage 5).

    compute-sanitizer --tool memcheck python3 benchmarks/gpu_smoke.py
    compute-sanitizer --tool racecheck python3 benchmarks/gpu_smoke.py
    python3 benchmarks/gpu_smoke.py --dry-run        # what it would launch; no GPU needed

CuPy's memory pool hands out slices of large blocks, inside which memcheck sees no bounds:
the pool is switched off here, so every array is an allocation of its own and a kernel that
reads or writes one element past its array is caught. Each op's result is also checked
against the float64 reference, so a kernel that the sanitizer lets pass but computes
garbage under it is reported too. Exit status: 0 when every op ran and matched.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from engine import validate  # noqa: E402
from engine.ops import cases  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exposure", action="append", choices=("cuda-ext", "cuda-rtc"),
                        help="only this exposure (repeatable); default: every one that runs here")
    parser.add_argument("--dry-run", action="store_true", help="list what would be launched, launch nothing")
    args = parser.parse_args(argv)
    todo = cases("odd")
    if args.dry_run:
        print(f"smoke: would launch {len(todo)} cases ({len({c.op for c in todo})} ops) through each CUDA exposure")
        return 0
    exposures, notes = validate.exposures_to_run("all")
    exposures = [e for e in exposures if e != "numba" and (not args.exposure or e in args.exposure)]
    for note in notes:
        print(note)
    if not exposures:
        print("smoke: no CUDA exposure runs here")
        return 2
    import cupy
    from engine.backend import get_backend
    cupy.cuda.set_allocator(None)  # every array its own cudaMalloc: memcheck sees its bounds
    failures = 0
    for exposure in exposures:
        backend = get_backend(exposure)
        for case in todo:
            row = validate.check_case(case, exposure, backend, cupy, case.inputs(), validate.reference_outputs(case))
            cupy.cuda.Device().synchronize()
            if not row.passed:
                failures += 1
                print(f"smoke: {exposure} {case.op} {case.label}: {row.note}")
        print(f"smoke: {exposure}: {len(todo)} cases launched")
    print(f"smoke: {failures} failing case(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
