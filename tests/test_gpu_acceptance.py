"""benchmarks/gpu_acceptance.sh cannot rot between GPU runs: its dry run (what a machine
without a GPU runs) goes through every stage's plumbing -- timeouts, logs, the figures read
back, the summary rewritten after each stage, the packing for the device tool -- with the
GPU stages reported "skipped: no GPU"; a stage that fails does not stop the next."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from engine.ops import cases

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_acceptance.sh"
STAGES = ["environment and build", "validate", "train", "GPU tests", "compute-sanitizer", "benchmarks", "distributed"]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils' timeout")


def dry_run(tmp_path, *args, python=sys.executable):
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PYTHON=str(python))
    result = subprocess.run(["bash", str(SCRIPT), "--dry-run", *args], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=600)
    return result, out


def test_the_dry_run_goes_through_every_stage_and_packs_three_files(tmp_path):
    result, out = dry_run(tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["acceptance.tar.gz", "summary.json", "summary.md"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "dry-run"
    assert [s["name"] for s in summary["stages"]] == STAGES
    for stage in summary["stages"]:
        assert stage["status"] == "skipped: no GPU (dry run: its plumbing ran)", stage
        assert 0 < stage["seconds"] <= stage["limit_s"], stage
    figures = {s["name"]: s["figures"] for s in summary["stages"]}
    assert figures["validate"]["rows"] == figures["validate"]["rows_passed"] > 0
    assert figures["train"]["runs"]["cpu-dry-run"]["epochs"] == 1
    assert figures["GPU tests"]["collected"] > 0
    assert figures["compute-sanitizer"]["would_launch_cases"] == len(cases("odd"))
    assert figures["benchmarks"]["cpu_op_rows"] > 0
    runs = figures["distributed"]["runs"]  # the dry run: two ranks on the CPU against one process
    assert runs["cpu-2"]["ok"] and runs["cpu-2"]["within_tolerance"] and runs["single"]["exit"] == 0, runs
    assert "| 6. benchmarks | skipped: no GPU" in (out / "summary.md").read_text()
    with tarfile.open(out / "acceptance.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"acceptance/summary.json", "acceptance/2-validate.log", "acceptance/validate.json"} <= names


def test_a_failing_stage_does_not_stop_the_next(tmp_path):
    """A python that fails `engine validate` and runs everything else: stage 2 fails, the
    summary says so, and stages 3 and 5 still run."""
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/usr/bin/env bash\nif [ "$1 $2 $3" = "-m engine validate" ]; then exit 3; fi\n'
                       f'exec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    result, out = dry_run(tmp_path, "--stages", "2,3,5", python=wrapper)
    assert result.returncode == 0, result.stderr[-3000:]
    stages = {s["name"]: s for s in json.loads((out / "summary.json").read_text())["stages"]}
    assert sorted(stages) == ["compute-sanitizer", "train", "validate"]
    assert stages["validate"]["status"] == "failed (dry run, exit 3)"
    assert stages["train"]["status"].startswith("skipped: no GPU")
    assert stages["compute-sanitizer"]["status"].startswith("skipped: no GPU")


def test_an_unknown_option_is_one_error_line(tmp_path):
    result = subprocess.run(["bash", str(SCRIPT), "--fast"], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: gpu_acceptance.sh: unknown option --fast (expected --dry-run, --wheels DIR, --stages LIST)"]


def test_a_wheel_that_does_not_install_fails_stage_1(tmp_path):
    (tmp_path / "wheels").mkdir()  # no wheel in it: pip has nothing to install
    result, out = dry_run(tmp_path, "--stages", "1", "--wheels", str(tmp_path / "wheels"))
    assert result.returncode == 0, result.stderr[-3000:]
    [stage] = json.loads((out / "summary.json").read_text())["stages"]
    assert stage["status"].startswith("failed (dry run, exit "), stage


def test_on_a_gpu_the_build_targets_its_arch_in_parallel_and_a_failed_build_fails_stage_1_only(tmp_path):
    """GPU mode with stand-ins: an nvidia-smi reporting compute capability 9.0, and a python
    whose pip "builds" without the extension (as setup.py does when nvcc fails) and whose
    engine commands succeed. Stage 1 fails because the extension does not import; pip was
    asked for sm_90 only, one job per core; stage 2 (NVRTC) still runs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text('#!/usr/bin/env bash\ncase "$*" in *name,*) echo "Stand-in GPU, 1.0, 9.0, 1 MiB" ;; '
                   '*compute_cap*) echo "9.0" ;; esac\n')
    python = bin_dir / "python"
    python.write_text(f'#!/usr/bin/env bash\n'
                      f'case "$1 $2" in\n'
                      f'  "-m pip") echo "pip ENGINE_CUDA_ARCHS=$ENGINE_CUDA_ARCHS ENGINE_BUILD_JOBS=$ENGINE_BUILD_JOBS $*"\n'
                      f'            echo "engine._cuda_ext NOT built (stand-in: nvcc failed)"; exit 0 ;;\n'
                      f'  "-m engine") echo "stand-in: $*"; exit 0 ;;\n'
                      f'esac\n'
                      f'case "$*" in *_cuda_ext*) echo "No module named engine._cuda_ext" >&2; exit 1 ;; esac\n'
                      f'exec "{sys.executable}" "$@"\n')
    for f in (smi, python):
        f.chmod(0o755)
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PYTHON=str(python), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(["bash", str(SCRIPT), "--stages", "1,2"], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "gpu"
    build, validate = summary["stages"]
    assert build["status"] == "failed (exit 1)", build
    assert build["figures"]["extension"] == "not built: stand-in: nvcc failed"
    assert validate["status"] == "passed", validate
    with tarfile.open(out / "acceptance.tar.gz") as tar:
        log = tar.extractfile("acceptance/1-build.log").read().decode()
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    assert (f"pip ENGINE_CUDA_ARCHS=90 ENGINE_BUILD_JOBS={nproc} -m pip install -v --no-build-isolation "
            f"--no-deps -e .") in log, log
