"""The bookkeeping of benchmarks/gpu_acceptance.sh: what the machine is, and after every
stage the summary (summary.json, summary.md) of all stages so far, with the figures each
stage measured read from the files it wrote.

    python3 benchmarks/acceptance.py env WORK
    python3 benchmarks/acceptance.py record WORK STAGE NAME RC SECONDS LIMIT MODE [STATUS]
    python3 benchmarks/acceptance.py pack WORK DEST     # WORK as one tar.gz + the summaries in DEST

MODE is "gpu" or "dry-run"; STATUS, when given, overrides the one RC gives ("skipped: ...").
Nothing here needs a GPU, CuPy or the engine to run.
"""
from __future__ import annotations

import datetime
import glob
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET

STAGES = ["environment and build", "validate", "train", "GPU tests", "compute-sanitizer", "benchmarks", "distributed"]


def _run(*command) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _version(module: str):
    try:
        return __import__(module).__version__
    except Exception:
        return None


def environment() -> dict:
    env = {"date": datetime.date.today().isoformat(), "host": platform.node(), "python": platform.python_version(),
           "cpu_cores": os.cpu_count(), "gpu": None, "driver": None, "compute_capability": None,
           "nvcc": (re.findall(r"release [\d.]+", _run("nvcc", "--version")) or [None])[0]}
    gpu = _run("nvidia-smi", "--query-gpu=name,driver_version,compute_cap,memory.total", "--format=csv,noheader")
    if gpu:
        env["gpu"], env["driver"], env["compute_capability"], env["memory"] = [f.strip() for f in gpu.splitlines()[0].split(",")]
    for module in ("numpy", "numba", "cupy", "torch", "mlxtend"):
        env[module] = _version(module)
    try:
        import torch
        env["cudnn"] = torch.backends.cudnn.version() if torch.cuda.is_available() else None
        env["torch_cuda"] = torch.version.cuda
    except Exception:
        pass
    try:
        import cupy
        env["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
    except Exception:
        pass
    return env


# ---------------------------------------------------------------------------------------
# The figures of each stage, from the files it wrote in WORK.

def _json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _text(path) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def figures_build(work) -> dict:
    log = _text(os.path.join(work, "1-build.log"))
    built = re.search(r"built engine._cuda_ext in (\d+) s", log)
    not_built = re.search(r"engine._cuda_ext NOT built \((.*?)\)", log)
    return {"environment": _json(os.path.join(work, "environment.json")),
            "extension": f"built in {built.group(1)} s" if built else (f"not built: {not_built.group(1)}" if not_built else
                                                                    "not attempted"),
            "carried_wheels": re.findall(r"Successfully installed (.*)", log)}


def figures_validate(work) -> dict:
    report = _json(os.path.join(work, "validate.json"))
    if not report:
        return {}
    rows = report["rows"]
    failed = sorted({f"{r['op']} ({r['exposure']})" for r in rows if not r["passed"]})
    return {"exposures": report["exposures"], "rows": len(rows), "rows_passed": sum(r["passed"] for r in rows),
            "failing": failed,
            "exposures_compared_bitwise": report.get("exposures_compared"),
            "exposures_differ": report.get("exposures_differ")}


def figures_train(work) -> dict:
    runs = {}
    for path in sorted(glob.glob(os.path.join(work, "train-*.json"))):
        run = _json(path) or {}
        runs[os.path.basename(path)[6:-5]] = {k: run.get(k) for k in ("held_out_accuracy", "images_per_second",
                                                                       "epochs", "device", "backend", "seconds")}
    return {"runs": runs}


def figures_tests(work) -> dict:
    try:
        suite = ET.parse(os.path.join(work, "pytest.xml")).getroot()
    except (OSError, ET.ParseError):
        collected = re.findall(r"(\d+) tests? collected", _text(os.path.join(work, "4-tests.log")))
        return {"collected": int(collected[-1])} if collected else {}
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}


def figures_sanitizer(work) -> dict:
    out = {}
    for tool in ("memcheck", "racecheck"):
        log = _text(os.path.join(work, f"5-{tool}.log"))
        summary = re.findall(r"(?:ERROR|RACECHECK) SUMMARY: (\d+) (?:error|hazard)", log)
        smoke = re.findall(r"smoke: (\d+) failing case", log)
        if summary or smoke:
            out[tool] = {"errors": int(summary[-1]) if summary else None, "smoke_failures": int(smoke[-1]) if smoke else None}
    dry = re.findall(r"smoke: would launch (\d+) cases", _text(os.path.join(work, "5-sanitizer.log")))
    if dry:
        out["would_launch_cases"] = int(dry[0])
    return out


def figures_bench(work) -> dict:
    for path in sorted(glob.glob(os.path.join(work, "*.json"))):
        report = _json(path)
        if isinstance(report, dict) and "rows" in report and "environment" in report:
            rows = report["rows"]
            ratios = sorted(r["ratio"] for r in rows if r.get("suite") == "gpu_ops" and r.get("ratio"))
            return {"file": os.path.basename(path), "ceilings": report.get("ceilings"),
                    "gpu_op_rows": sum(r.get("suite") == "gpu_ops" for r in rows),
                    "wrong_kernels": [f"{r['op']} {r.get('shapes')} {r.get('exposure')}" for r in rows
                                      if r.get("check", "ok") != "ok"],
                    "median_ours_over_cudnn": ratios[len(ratios) // 2] if ratios else None,
                    "train_images_per_s": {f"{r['model']} {r['batch']} {r['device']} {r['impl']}": r["images_per_s"]
                                           for r in rows if r.get("suite") == "train"},
                    "cpu_op_rows": sum(r.get("suite") == "cpu_ops" for r in rows)}
    return {}


def figures_distributed(work) -> dict:
    """Each run of benchmarks/dist_check.py: how it reduced, whether it ended where the lone run did."""
    report = _json(os.path.join(work, "distributed.json"))
    if not report:
        return {}
    keys = ("exit", "ok", "said", "bitwise", "within_tolerance", "max_abs_diff", "seconds")
    return {"gpus": report.get("gpus"), "skipped": report.get("skipped"),
            "runs": {name: {k: run.get(k) for k in keys} for name, run in report["runs"].items()}}


FIGURES = [figures_build, figures_validate, figures_train, figures_tests, figures_sanitizer, figures_bench,
           figures_distributed]


# ---------------------------------------------------------------------------------------

def status_of(rc: int, mode: str, override: str) -> str:
    if override:
        return override
    if mode == "dry-run":
        return "skipped: no GPU (dry run: its plumbing ran)" if rc == 0 else f"failed (dry run, exit {rc})"
    if rc in (124, 137):
        return "timeout"
    return "passed" if rc == 0 else f"failed (exit {rc})"


def record(work, stage, name, rc, seconds, limit, mode, override="") -> dict:
    path = os.path.join(work, "stages.json")
    stages = _json(path) or []
    stages = [s for s in stages if s["stage"] != stage]
    stages.append({"stage": stage, "name": name, "status": status_of(rc, mode, override), "exit": rc,
                   "seconds": round(seconds, 1), "limit_s": limit, "mode": mode,
                   "figures": FIGURES[stage - 1](work)})
    stages.sort(key=lambda s: s["stage"])
    with open(path, "w") as f:
        json.dump(stages, f, indent=1)
    summary = {"mode": mode, "stages": stages, "wall_s": round(sum(s["seconds"] for s in stages), 1),
               "environment": _json(os.path.join(work, "environment.json"))}
    with open(os.path.join(work, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(work, "summary.md"), "w") as f:
        f.write(markdown(summary))
    return summary


def markdown(summary) -> str:
    env = summary.get("environment") or {}
    lines = [f"# GPU acceptance, {env.get('date', '')} on {env.get('gpu') or 'no GPU'} ({summary['mode']})", "",
             "| what | version |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in env.items() if v is not None]
    lines += ["", f"Wall time of the stages: {summary['wall_s']} s.", "",
              "| stage | status | seconds (limit) | figures |", "| --- | --- | --- | --- |"]
    for s in summary["stages"]:
        figures = json.dumps(s["figures"], default=str).replace("|", "/")
        lines.append(f"| {s['stage']}. {s['name']} | {s['status']} | {s['seconds']} ({s['limit_s']}) | {figures} |")
    return "\n".join(lines) + "\n"


def pack(work, dest) -> None:
    """WORK as acceptance.tar.gz in DEST, and the two summaries beside it: three files, so that
    everything comes back from a machine that returns only a few."""
    os.makedirs(dest, exist_ok=True)
    tmp = os.path.join(dest, "acceptance.tar.gz.tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(work, arcname="acceptance")
    os.replace(tmp, os.path.join(dest, "acceptance.tar.gz"))
    for name in ("summary.json", "summary.md"):
        if os.path.exists(os.path.join(work, name)):
            shutil.copy(os.path.join(work, name), os.path.join(dest, name))


def main(argv) -> int:
    if argv[0] == "env":
        with open(os.path.join(argv[1], "environment.json"), "w") as f:
            json.dump(environment(), f, indent=1)
        return 0
    if argv[0] == "record":
        work, stage, name, rc, seconds, limit, mode = argv[1:8]
        record(work, int(stage), name, int(rc), float(seconds), int(limit), mode, argv[8] if len(argv) > 8 else "")
        return 0
    if argv[0] == "pack":
        pack(argv[1], argv[2])
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
