#!/usr/bin/env bash
# The GPU check: every CUDA path of the package tested, and the GPU figures measured, in one run of under 10 minutes.
#
# Run from the repository root on a machine with CUDA, after `bash benchmarks/gpu_bundle.sh` prepared .gpu_bundle/
# (the wheels this machine may lack, a few real CTs, the commit) on a machine with network access:
#
#     bash benchmarks/gpu_check.sh
#
# Steps (each under `timeout`, all within GPU_CHECK_BUDGET_S seconds, default 540; a failed step does not stop the
# others): env; the tests that take the device fixture, on cuda (pytest -m "cuda and not slow"); attack_cost,
# augmentation_cost, sweep_cost and sliding_window_memory with --device cuda; the abdomen bundle's
# robustness sweep with --gpu_pipeline true on the TotalSegmentator CT; fp16 / bf16 autocast gradient-sign agreement
# on a 3D 128^3 U-Net batch. Everything goes into one JSON: $OUT/gpu_check.json when OUT is set, else
# ./gpu_check.json (rewritten after every step, so a killed run keeps what it measured), then a summary table.
#
# Exit codes: 0 all steps passed; 1 some step failed (see the JSON); 3 CUDA is not available (nothing was run).
# Environment: PYTHON (default python3), GPU_CHECK_BUDGET_S, GPU_CHECK_BUNDLE (default .gpu_bundle).
# GPU_CHECK_DEVICE=cpu is a dry run of the script's flow on the CPU with tiny sizes (the cpu instances of the test
# files in GPU_CHECK_TESTS); its figures mean nothing. It exists to test the script without a GPU.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

PYTHON="${PYTHON:-python3}"
BUNDLE_DIR="${GPU_CHECK_BUNDLE:-.gpu_bundle}"
BUDGET="${GPU_CHECK_BUDGET_S:-540}"
DEVICE="${GPU_CHECK_DEVICE:-cuda}"

if [ "$DEVICE" = cuda ]; then
    if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
        echo "gpu_check: CUDA is not available to $PYTHON (torch.cuda.is_available() is False or torch is missing);" \
            "this check runs only on a GPU machine" >&2
        exit 3
    fi
    TESTS=(tests -m "cuda and not slow")
    ATTACK=(--device cuda)
    AUGMENT=(--device cuda)
    SWEEP=(--device cuda)
    SLIDING=(--device cuda)
    AUTOCAST=(--device cuda --size 128 --batch 2)
    ABDOMEN=(--device cuda --epochs 20 --epsilons "[1, 4, 16]")
elif [ "$DEVICE" = cpu ]; then
    echo "gpu_check: GPU_CHECK_DEVICE=cpu, a dry run of the flow with tiny sizes, not a GPU check" >&2
    read -r -a TEST_PATHS <<<"${GPU_CHECK_TESTS:-tests/engines/test_distributed.py}"
    TESTS=("${TEST_PATHS[@]}" -m "not slow" -k cpu)
    ATTACK=(--device cpu --repeats 1 --steps 1 --batch 1 --size 32)
    AUGMENT=(--device cpu --repeats 1 --batch 1 --size 32)
    SWEEP=(--device cpu --images 1 --repeats 1 --unit-batch 1 --threads 1)
    SLIDING=(--device cpu --roi 32 --volumes 32x32x32 48x32x32 --sw-batch 1 --threads 1)
    AUTOCAST=(--device cpu --size 16 --batch 1 --channels "[4, 8]")
    ABDOMEN=(--device cpu --epochs 1 --epsilons "[1]" --overrides
        '{"spatial_size": [32, 32, 32], "network_choices#unet#channels": [8, 16, 32], "network_choices#unet#strides": [2, 2]}')
else
    echo "gpu_check: GPU_CHECK_DEVICE must be cuda or cpu, not $DEVICE" >&2
    exit 2
fi

if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    JSON="$OUT/gpu_check.json"
    KEEP="$OUT"
else
    JSON="$PWD/gpu_check.json"
    KEEP="$PWD/gpu_check_files"
fi
PARTS="$KEEP/gpu_check_parts"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
rm -rf "$PARTS"
mkdir -p "$PARTS"
START=$SECONDS

CHECK=("$PYTHON" benchmarks/gpu_check.py)
FAILED=0
# step NAME SECONDS COMMAND...: run under `timeout` (capped by what is left of the budget), log to NAME.log, record
# "exit-code seconds" in NAME.rc, then rewrite the JSON.
step() {
    local name="$1" limit="$2"
    shift 2
    local left=$((BUDGET - (SECONDS - START)))
    if [ "$left" -lt 20 ]; then
        echo "gpu_check: $name skipped, the ${BUDGET} s budget is spent" | tee "$PARTS/$name.log"
        echo "124 0" >"$PARTS/$name.rc"
        FAILED=1
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "=== $name (limit ${limit} s)"
    local began=$SECONDS rc
    timeout --kill-after=10 "$limit" "$@" >"$PARTS/$name.log" 2>&1
    rc=$?
    echo "$rc $((SECONDS - began))" >"$PARTS/$name.rc"
    tail -n 3 "$PARTS/$name.log"
    [ "$rc" -ne 0 ] && FAILED=1
    "$PYTHON" benchmarks/gpu_check.py report --parts "$PARTS" --out "$JSON" --quiet
}

# Set-up without network: the packages this Python lacks come from the carried wheels, unpacked (not pip-installed)
# into a folder put on PYTHONPATH; the machine's own torch, numpy, ... are used as they are.
SITE="$PWD/$BUNDLE_DIR/site"
if [ -d "$BUNDLE_DIR/wheels" ]; then
    step 00_setup 60 "${CHECK[@]}" setup "$BUNDLE_DIR/wheels" "$SITE"
else
    echo "gpu_check: no $BUNDLE_DIR/wheels (run benchmarks/gpu_bundle.sh first); using what $PYTHON has" >&2
fi
export PYTHONPATH="$PWD:$PWD/benchmarks:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export MONAI_ADVSEG_DATA="$PWD/$BUNDLE_DIR/data"
# deterministic cuBLAS, so that tests comparing two runs of the same computation see the same results
export CUBLAS_WORKSPACE_CONFIG="${CUBLAS_WORKSPACE_CONFIG:-:4096:8}"
export PYTHONUNBUFFERED=1

step 01_env 60 "${CHECK[@]}" env --part "$PARTS/01_env.json"
# The tests that take the device fixture, their cuda instances only; the slow bundle runs are left out.
# shellcheck disable=SC2016  # the single quotes are on purpose: the inner bash expands its own $0, $1, $@
step 02_tests 240 bash -c '"$0" -m pytest "${@:2}" -q -p no:cacheprovider --continue-on-collection-errors \
    --junitxml "$1/02_tests.xml"; "$0" benchmarks/gpu_check.py tests --junit "$1/02_tests.xml" \
    --part "$1/02_tests.json"' "$PYTHON" "$PARTS" "${TESTS[@]}"
step 03_attack_cost 90 "${CHECK[@]}" bench --part "$PARTS/03_attack_cost.json" benchmarks/attack_cost.py -- \
    "${ATTACK[@]}"
step 04_augmentation_cost 90 "${CHECK[@]}" bench --part "$PARTS/04_augmentation_cost.json" \
    benchmarks/augmentation_cost.py -- "${AUGMENT[@]}"
step 05_sweep_cost 120 "${CHECK[@]}" bench --part "$PARTS/05_sweep_cost.json" benchmarks/sweep_cost.py -- "${SWEEP[@]}"
step 06_sliding_window_memory 90 "${CHECK[@]}" bench --part "$PARTS/06_sliding_window_memory.json" \
    benchmarks/sliding_window_memory.py -- "${SLIDING[@]}"
step 07_autocast 120 "${CHECK[@]}" autocast --part "$PARTS/07_autocast.json" "${AUTOCAST[@]}"
step 08_abdomen_sweep 180 "${CHECK[@]}" bundle --part "$PARTS/08_abdomen_sweep.json" --data "$MONAI_ADVSEG_DATA" \
    --work "$WORK/abdomen" "${ABDOMEN[@]}"

# the sweep's own reports come back with the JSON
if [ -d "$WORK/abdomen/robustness" ]; then
    mkdir -p "$KEEP/abdomen_robustness"
    cp "$WORK/abdomen/robustness"/robustness.* "$WORK/abdomen/robustness"/robustness_cases.csv \
        "$KEEP/abdomen_robustness/" 2>/dev/null
fi
rm -rf "$WORK"
"$PYTHON" benchmarks/gpu_check.py report --parts "$PARTS" --out "$JSON"
echo "gpu_check: $((SECONDS - START)) s in all"
exit "$FAILED"
