#!/usr/bin/env bash
# The full GPU report in one command, from the repository root or anywhere:
#
#     bash benchmarks/gpu_report.sh
#
# For a CUDA machine with no network and torch, triton, pytest, pytest-benchmark preinstalled.
# Steps: install fastmae offline -> the whole test suite on CUDA (real compiles, no interpreter)
# -> the per-op benchmarks -> the training-step benchmarks -> ONE results file under
# benchmarks/results/ and a markdown summary on stdout. Fits in 10 minutes on an H100: each step
# has a time budget (seconds, environment variables below; with their grace periods they add up
# to 575 s, under the 10-minute limit); benchmarks that would start after
# their budget are skipped and listed in the results file, a step that overruns is interrupted
# and keeps what it measured. Without CUDA the same script writes a CPU report (labelled as
# such; the tests then run under the Triton interpreter, as in CI).
#
#   FASTMAE_REPORT_TESTS_S  test suite                      (default 150)
#   FASTMAE_REPORT_OPS_S    per-op benchmarks               (default 130)
#   FASTMAE_REPORT_E2E_S    training-step benchmarks        (default 160)
#   FASTMAE_REPORT_SCOPE    per-op shapes: report | full    (default report; full takes ~30 min)
#   FASTMAE_REPORT_WORKDIR  where the raw logs, JUnit XML and pytest-benchmark JSON go (default: a temp dir)
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
START=$(date +%s)
WORK=${FASTMAE_REPORT_WORKDIR:-$(mktemp -d "${TMPDIR:-/tmp}/fastmae-report.XXXXXX")}
mkdir -p "$WORK"
TESTS_S=${FASTMAE_REPORT_TESTS_S:-150}
OPS_S=${FASTMAE_REPORT_OPS_S:-130}
E2E_S=${FASTMAE_REPORT_E2E_S:-160}
PY=${PYTHON:-python}

step() { echo "[$(( $(date +%s) - START ))s] $*" >&2; }

# Run "$@" for at most $1 seconds; SIGINT first so pytest prints its summary and writes its JSON,
# SIGKILL 30 s later if it is still there. Exit code saved to $WORK/$2.rc, output to $WORK/$2.log.
bounded() {
    local seconds=$1 name=$2
    shift 2
    timeout --signal=INT --kill-after=30 "$seconds" "$@" >"$WORK/$name.log" 2>&1
    echo $? >"$WORK/$name.rc"
    tail -n 3 "$WORK/$name.log" >&2
}

step "install (offline): pip install -e . --no-deps --no-build-isolation"
$PY -m pip install -e . --no-deps --no-build-isolation >"$WORK/install.log" 2>&1
echo $? >"$WORK/install.rc"

if $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    DEVICE=cuda
    SCOPE=${FASTMAE_REPORT_SCOPE:-report}
    # Real compiles: tests/conftest.py turns the interpreter on only when TRITON_INTERPRET is unset.
    export TRITON_INTERPRET=0
    nvidia-smi >"$WORK/nvidia-smi.txt" 2>&1 || true
else
    DEVICE=cpu
    SCOPE=cpu
    unset TRITON_INTERPRET  # the tests' conftest enables the interpreter on CPU
fi
step "device: $DEVICE, benchmark scope: $SCOPE, work dir: $WORK"

# The tests choose the GPU with --device cuda where tests/conftest.py offers that option.
TEST_ARGS=(tests/ -q -rfE -p no:cacheprovider --junitxml="$WORK/tests.xml")
if [ "$DEVICE" = cuda ] && $PY -m pytest tests/ --help 2>/dev/null | grep -q -- "--device"; then
    TEST_ARGS+=(--device cuda)
fi
step "test suite (budget ${TESTS_S}s): pytest ${TEST_ARGS[*]}"
bounded "$TESTS_S" tests $PY -m pytest "${TEST_ARGS[@]}"

# The benchmarks never run under the interpreter (on CPU they use the torch backend).
export TRITON_INTERPRET=0
BENCH_ARGS=(--benchmark-only -q -rs -p no:cacheprovider --bench-scope "$SCOPE" --benchmark-columns=min,median,rounds)
step "per-op benchmarks (budget ${OPS_S}s)"
bounded $((OPS_S + 45)) ops $PY -m pytest benchmarks/ "${BENCH_ARGS[@]}" --ignore=benchmarks/test_bench_train_step.py --ignore=benchmarks/test_bytes_model.py \
    --bench-budget "$OPS_S" --benchmark-json="$WORK/ops.json"

step "training-step benchmarks (budget ${E2E_S}s)"
bounded $((E2E_S + 90)) e2e $PY -m pytest benchmarks/test_bench_train_step.py "${BENCH_ARGS[@]}" \
    --bench-budget "$E2E_S" --benchmark-json="$WORK/e2e.json"

step "report"
$PY -m benchmarks.report --workdir "$WORK" --out benchmarks/results
RC=$?
step "done in $(( $(date +%s) - START ))s; raw logs in $WORK"
exit $RC
