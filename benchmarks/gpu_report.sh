#!/usr/bin/env bash
# The GPU report in one command (CUDA, no network; torch, triton, pytest, pytest-benchmark preinstalled):
#     bash benchmarks/gpu_report.sh
# offline install -> the test suite on CUDA (real compiles) and the bytes-model tests -> per-op and
# training-step benchmarks -> ONE results file under benchmarks/results/ and its markdown summary.
# Without CUDA the same steps write a CPU report. ONE deadline, FASTMAE_REPORT_DEADLINE_S (560) s from
# the start: each step gets a share of the time left (tests 25%, per-op benchmarks 45% of the rest, the
# training step the rest; RESERVE_S kept for the report), then SIGINT (pytest still writes its summary
# and JSON) and SIGKILL GRACE_S later; --bench-budget skips what would start too late (listed).
#   FASTMAE_REPORT_SCOPE=full  the whole per-op grid (~30 min)   FASTMAE_REPORT_WORKDIR=DIR  keep the logs
#   FASTMAE_REPORT_SKIP_INSTALL=1  no pip install: fastmae imported from the source tree
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
START=$(date +%s)
DEADLINE_S=${FASTMAE_REPORT_DEADLINE_S:-560}
RESERVE_S=20  # the report itself
GRACE_S=10    # SIGINT -> SIGKILL
WORK=${FASTMAE_REPORT_WORKDIR:-$(mktemp -d "${TMPDIR:-/tmp}/fastmae-report.XXXXXX")}
mkdir -p "$WORK"
PY=${PYTHON:-python}

step() { echo "[$(( $(date +%s) - START ))s] $*" >&2; }
# PCT percent of the seconds left before the deadline (less the reserve), at least MIN.
share() { local s=$(( (START + DEADLINE_S - RESERVE_S - $(date +%s)) * $1 / 100 )); echo $(( s > $2 ? s : $2 )); }
# bounded SECONDS NAME CMD...: run CMD for at most SECONDS; output to $WORK/NAME.log, exit code to NAME.rc.
bounded() {
    local total=$1 name=$2
    shift 2
    timeout --signal=INT --kill-after="$GRACE_S" "$(( total > 2 * GRACE_S ? total - GRACE_S : GRACE_S ))" \
        "$@" >"$WORK/$name.log" 2>&1
    echo $? >"$WORK/$name.rc"
    tail -n 3 "$WORK/$name.log" >&2
}

if [ "${FASTMAE_REPORT_SKIP_INSTALL:-0}" = 1 ]; then
    step "install skipped (FASTMAE_REPORT_SKIP_INSTALL=1): fastmae is imported from the source tree"
    echo skipped >"$WORK/install.rc"
else
    step "install (offline): pip install -e . --no-deps --no-build-isolation --no-index"
    bounded 90 install $PY -m pip install -e . --no-deps --no-build-isolation --no-index \
        --disable-pip-version-check
    if [ "$(cat "$WORK/install.rc")" -ne 0 ]; then
        step "ABORT: the offline install failed (log: $WORK/install.log). It needs a setuptools that"
        step "builds editable wheels (>= 70.1, or older with 'wheel'). FASTMAE_REPORT_SKIP_INSTALL=1 skips it."
        exit 2
    fi
fi

if $PY -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    DEVICE=cuda SCOPE=${FASTMAE_REPORT_SCOPE:-report}
    export TRITON_INTERPRET=0  # real compiles; tests/helpers.py then picks the GPU itself
else
    DEVICE=cpu SCOPE=cpu
    unset TRITON_INTERPRET  # tests/conftest.py turns the interpreter on
fi
echo "$DEVICE" >"$WORK/device.txt"
step "device: $DEVICE, benchmark scope: $SCOPE, deadline ${DEADLINE_S}s, work dir: $WORK"

T=$(share 25 60)
step "test suite (${T}s): pytest tests/"
bounded "$T" tests $PY -m pytest tests/ -q -rfE -p no:cacheprovider
step "bytes-model tests: pytest benchmarks/test_bytes_model.py"
bounded 60 bytes_model $PY -m pytest benchmarks/test_bytes_model.py -q -rfE -p no:cacheprovider

export TRITON_INTERPRET=0  # the benchmarks never run under the interpreter (CPU: the torch backend)
ARGS=(--benchmark-only -q -rs -p no:cacheprovider --bench-scope "$SCOPE" --benchmark-columns=min,median,rounds)
T=$(share 45 60)  # --bench-budget leaves room for the last benchmark started in time (a compile: ~30 s)
step "per-op benchmarks (${T}s)"
bounded "$T" ops $PY -m pytest benchmarks/ "${ARGS[@]}" --ignore=benchmarks/test_bench_train_step.py \
    --ignore=benchmarks/test_bytes_model.py --bench-budget $(( T > 50 ? T - 40 : 10 )) --benchmark-json="$WORK/ops.json"
T=$(share 100 60)
step "training-step benchmarks (${T}s)"
bounded "$T" e2e $PY -m pytest benchmarks/test_bench_train_step.py "${ARGS[@]}" \
    --bench-budget $(( T > 40 ? T - 30 : 10 )) --benchmark-json="$WORK/e2e.json"

step "report"
$PY -m benchmarks.report --workdir "$WORK" --out benchmarks/results
RC=$?
step "done in $(( $(date +%s) - START ))s; raw logs in $WORK"
exit $RC
