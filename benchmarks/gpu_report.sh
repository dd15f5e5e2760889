#!/usr/bin/env bash
# The full GPU report in one command, from the repository root or anywhere:
#
#     bash benchmarks/gpu_report.sh
#
# For a CUDA machine with no network and torch, triton, pytest, pytest-benchmark preinstalled.
# Steps: install fastmae offline -> the whole test suite on CUDA (real compiles, no interpreter)
# and the bytes-model tests -> the per-op benchmarks -> the training-step benchmarks -> ONE results
# file under benchmarks/results/ and a markdown summary on stdout.
#
# ONE deadline for the whole script (FASTMAE_REPORT_DEADLINE_S seconds from its start, default 560,
# under a 10-minute command limit). Each step's time limit is computed from the time left when it
# starts: the test suite gets 25% of it, the per-op benchmarks 45% of what is left after the tests,
# the training step the rest, always keeping REPORT_RESERVE_S for the report. A step is interrupted
# with SIGINT at its limit (pytest then writes its summary and JSON) and killed 10 s later; the
# benchmarks also get a --bench-budget a little under their limit, so those that would start too late
# are skipped and listed in the results file. Without CUDA the same script writes a CPU report
# (labelled as such; the tests then run under the Triton interpreter, as in CI).
#
#   FASTMAE_REPORT_DEADLINE_S  the whole script                      (default 560)
#   FASTMAE_REPORT_SCOPE       per-op shapes: report | full          (default report; full takes ~30 min)
#   FASTMAE_REPORT_WORKDIR     raw logs, JUnit XML, pytest-benchmark JSON (default: a temp dir)
#   FASTMAE_REPORT_SKIP_INSTALL=1  no pip install: fastmae imported from the source tree (the
#                                  install aborts the script when it fails)
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
START=$(date +%s)
DEADLINE_S=${FASTMAE_REPORT_DEADLINE_S:-560}
REPORT_RESERVE_S=20  # the report itself: reads the JSON, runs git and nvidia-smi
GRACE_S=10           # SIGINT -> SIGKILL
WORK=${FASTMAE_REPORT_WORKDIR:-$(mktemp -d "${TMPDIR:-/tmp}/fastmae-report.XXXXXX")}
mkdir -p "$WORK"
PY=${PYTHON:-python}

step() { echo "[$(( $(date +%s) - START ))s] $*" >&2; }

# Seconds left before the deadline, less the report's reserve (never below 0).
left() {
    local s=$(( START + DEADLINE_S - REPORT_RESERVE_S - $(date +%s) ))
    echo $(( s > 0 ? s : 0 ))
}

# A step's total wall time: PCT percent of the time left, at least MIN seconds.
share() {
    local pct=$1 min=$2 s
    s=$(( $(left) * pct / 100 ))
    echo $(( s > min ? s : min ))
}

# Run "$@" for at most $1 seconds in all (SIGINT at $1 - GRACE_S so pytest prints its summary and
# writes its JSON, SIGKILL GRACE_S later). Exit code to $WORK/$2.rc, output to $WORK/$2.log.
bounded() {
    local total=$1 name=$2
    shift 2
    timeout --signal=INT --kill-after="$GRACE_S" "$(( total > GRACE_S * 2 ? total - GRACE_S : GRACE_S ))" \
        "$@" >"$WORK/$name.log" 2>&1
    echo $? >"$WORK/$name.rc"
    tail -n 3 "$WORK/$name.log" >&2
}

if [ "${FASTMAE_REPORT_SKIP_INSTALL:-0}" = 1 ]; then
    step "install skipped (FASTMAE_REPORT_SKIP_INSTALL=1): fastmae is imported from the source tree"
    echo skipped >"$WORK/install.rc"
else
    step "install (offline): pip install -e . --no-deps --no-build-isolation --no-index"
    timeout --kill-after="$GRACE_S" 90 $PY -m pip install -e . --no-deps --no-build-isolation --no-index \
        --disable-pip-version-check >"$WORK/install.log" 2>&1
    INSTALL_RC=$?
    echo $INSTALL_RC >"$WORK/install.rc"
    if [ "$INSTALL_RC" -ne 0 ]; then
        tail -n 20 "$WORK/install.log" >&2
        step "ABORT: the offline install failed (exit code $INSTALL_RC; log: $WORK/install.log). It needs a
    setuptools that builds editable wheels (>= 70.1, or an older one with 'wheel') in this environment.
    FASTMAE_REPORT_SKIP_INSTALL=1 runs the report from the source tree without installing."
        exit 2
    fi
fi

if $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    DEVICE=cuda
    SCOPE=${FASTMAE_REPORT_SCOPE:-report}
    # Real compiles: tests/conftest.py turns the interpreter on only when TRITON_INTERPRET is unset,
    # and tests/helpers.py then picks the GPU (DEVICE) by itself.
    export TRITON_INTERPRET=0
    nvidia-smi >"$WORK/nvidia-smi.txt" 2>&1 || true
else
    DEVICE=cpu
    SCOPE=cpu
    unset TRITON_INTERPRET  # the tests' conftest enables the interpreter on CPU
fi
echo "$DEVICE" >"$WORK/device.txt"
step "device: $DEVICE, benchmark scope: $SCOPE, deadline ${DEADLINE_S}s, work dir: $WORK"

TESTS_T=$(share 25 60)
step "test suite (${TESTS_T}s): pytest tests/"
bounded "$TESTS_T" tests $PY -m pytest tests/ -q -rfE -p no:cacheprovider --junitxml="$WORK/tests.xml"

# The formulas benchmarks/NOTES.md relies on (benchmarks/test_bytes_model.py; --benchmark-only skips it).
step "bytes-model tests: pytest benchmarks/test_bytes_model.py"
bounded 60 bytes_model $PY -m pytest benchmarks/test_bytes_model.py -q -rfE -p no:cacheprovider \
    --junitxml="$WORK/bytes_model.xml"

# The benchmarks never run under the interpreter (on CPU they use the torch backend).
export TRITON_INTERPRET=0
BENCH_ARGS=(--benchmark-only -q -rs -p no:cacheprovider --bench-scope "$SCOPE"
            --benchmark-columns=min,median,rounds)
# --bench-budget leaves room for the last benchmark started in time (a compile takes up to ~30 s).
OPS_T=$(share 45 60)
step "per-op benchmarks (${OPS_T}s)"
bounded "$OPS_T" ops $PY -m pytest benchmarks/ "${BENCH_ARGS[@]}" \
    --ignore=benchmarks/test_bench_train_step.py \
    --ignore=benchmarks/test_bytes_model.py --bench-budget $(( OPS_T - 40 > 10 ? OPS_T - 40 : 10 )) \
    --benchmark-json="$WORK/ops.json"

E2E_T=$(share 100 60)
step "training-step benchmarks (${E2E_T}s)"
bounded "$E2E_T" e2e $PY -m pytest benchmarks/test_bench_train_step.py "${BENCH_ARGS[@]}" \
    --bench-budget $(( E2E_T - 30 > 10 ? E2E_T - 30 : 10 )) --benchmark-json="$WORK/e2e.json"

step "report"
$PY -m benchmarks.report --workdir "$WORK" --out benchmarks/results
RC=$?
step "done in $(( $(date +%s) - START ))s; raw logs in $WORK"
exit $RC
