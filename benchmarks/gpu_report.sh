#!/usr/bin/env bash
# The GPU report in one call inside ONE deadline (benchmarks/NOTES.md, "The GPU report": the steps, the time
# shares, the hooks); OUT=<folder> collects the results file, its summary and logs.tar.gz, each step's as it
# ends. Exit 0 when the report was written, 2 when not.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# A pytest-xdist worker's variables (its own test starts this from one) would turn pytest-benchmark off.
unset PYTEST_XDIST_WORKER PYTEST_XDIST_WORKER_COUNT PYTEST_XDIST_TESTRUNUID
START=$(date +%s)
DEADLINE_S=${FASTMAE_REPORT_DEADLINE_S:-520}
RESERVE_S=15  # the report (at most 10 s of them; it takes well under 1), the copy to $OUT
FLOOR_S=20    # Python, torch and pytest start in well under that
WORK=${FASTMAE_REPORT_WORKDIR:-$(mktemp -d "${TMPDIR:-/tmp}/fastmae-report.XXXXXX")}
RESULTS_DIR=${FASTMAE_REPORT_RESULTS_DIR:-benchmarks/results}
PY=${PYTHON:-python3}
mkdir -p "$WORK" ${OUT:+"$OUT"}

step() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$WORK/steps.log" >&2; }
left() { echo $(( START + DEADLINE_S - RESERVE_S - $(date +%s) )); }  # seconds to the deadline less the reserve
# share NUM DEN: NUM/DEN of the seconds left, at least FLOOR_S of them (never more than are left).
share() {
    local l s
    l=$(left)
    s=$(( l * $1 / $2 > FLOOR_S ? l * $1 / $2 : FLOOR_S ))
    echo $(( s < l ? s : (l > 0 ? l : 0) ))
}
# deliver [FILES...]: to $OUT, logs.tar.gz (every file of $WORK, replaced whole) and FILES.
deliver() {
    [ -z "${OUT:-}" ] && return
    tar -czf "$OUT/logs.tar.gz.part" -C "$WORK" . && mv -f "$OUT/logs.tar.gz.part" "$OUT/logs.tar.gz"
    (( $# == 0 )) || cp -f "$@" "$OUT/"
}
# bounded SECONDS NAME TITLE CMD...: CMD for at most SECONDS (never past the deadline), SIGINT at the limit less
# a grace period, SIGKILL at the limit; output to $WORK/NAME.log, exit code to $WORK/NAME.rc, then delivered.
bounded() {
    local total=$1 name=$2 l grace
    l=$(left)
    (( total > l )) && total=$l
    (( total < 2 )) && { step "$3: not run, no time left before the deadline"; return; }
    step "$3 (${total}s)"
    shift 3
    grace=$(( total / 4 > 10 ? 10 : (total / 4 > 0 ? total / 4 : 1) ))
    # stderr of the group dropped: bash's "Killed" line when timeout kills its own process group
    { timeout --signal=INT --kill-after="$grace" "$(( total - grace ))" "$@" >"$WORK/$name.log" 2>&1; } 2>/dev/null
    echo $? >"$WORK/$name.rc"
    tail -n 2 "$WORK/$name.log" | cut -c1-200 >&2
    deliver
}

bounded 60 env "environment: python3 -m benchmarks.harness (deadline ${DEADLINE_S}s, work dir $WORK)" \
    $PY -m benchmarks.harness --json "$WORK/env.json"
INSTALL="skipped (FASTMAE_REPORT_SKIP_INSTALL=1)"
if [ "${FASTMAE_REPORT_SKIP_INSTALL:-0}" != 1 ]; then
    CMD=${FASTMAE_REPORT_INSTALL_CMD:-"$PY -m pip install -e . --no-deps --no-build-isolation --no-index"}
    bounded 90 install "install: $CMD" bash -c "$CMD"
    RC=$(cat "$WORK/install.rc" 2>/dev/null || echo none)
    [ "$RC" = 0 ] && INSTALL="installed: $CMD" || INSTALL="install failed (exit $RC, install.log)"
fi
if [ "${INSTALL%%:*}" != installed ]; then
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # fastmae/kernels links to kernels/: no build needed
    INSTALL="$INSTALL: fastmae imported from the source tree (PYTHONPATH=$PWD)"
fi
echo "$INSTALL" >"$WORK/install.txt"
step "$INSTALL"

DEVICE=$($PY -c "import json, sys; print(json.load(open(sys.argv[1]))['device_type'])" "$WORK/env.json" 2>/dev/null \
    || { $PY -c "import torch, sys; sys.exit(not torch.cuda.is_available())" && echo cuda || echo cpu; })
# CUDA: real compiles (tests/conftest.py puts the tests' tensors on the GPU); else the interpreter.
[ "$DEVICE" = cuda ] && SCOPE=${FASTMAE_REPORT_SCOPE:-report} INTERPRET=0 || SCOPE=cpu INTERPRET=1
# Each step after the install gets a share of the seconds left when it starts: 1/4, then 2/5, 2/9 and
# the rest (25, 30, 10 and 35 parts of them when every step uses its share; NOTES.md, "Time").
T=$(share 1 4)
LAST=(tests/test_model_triton.py tests/test_hf_integration.py tests/test_properties.py)  # whole model, properties
mapfile -t TESTS < <(grep -l requires_kernels tests/test_*.py | grep -v -x -F "${LAST[@]/#/-e}";
                     grep -l requires_kernels "${LAST[@]}" 2>/dev/null)
[ -n "${FASTMAE_REPORT_TESTS:-}" ] && read -r -a TESTS <<<"$FASTMAE_REPORT_TESTS"
X=()
W=$(( $(nproc) / 2 > 8 ? 8 : $(nproc) / 2 ))
$PY -c "import xdist" 2>/dev/null && (( W >= 2 )) && X+=(-n "$W")
$PY -c "import pytest_timeout" 2>/dev/null && X+=(--timeout "$(( T / 2 > 30 ? T / 2 : 30 ))")
bounded "$T" kernel_tests "kernel tests on $DEVICE: pytest ${TESTS[*]} ${X[*]}" \
    env TRITON_INTERPRET=$INTERPRET $PY -m pytest "${TESTS[@]}" -v -rfE -p no:cacheprovider "${X[@]}"

export TRITON_INTERPRET=0  # the benchmarks never run under the interpreter (CPU: the torch backend)
mapfile -t OP_FILES < <(grep -l "mark.bench_op" benchmarks/test_bench_*.py)  # the per-op benchmarks
DATA_FILES=(benchmarks/test_bench_resized_crop.py benchmarks/test_bench_data.py)
# the training step, and any benchmark file none of the steps before names
mapfile -t REST < <(grep -L "mark.bench_op" benchmarks/test_bench_*.py | grep -v -x -F "${DATA_FILES[@]/#/-e}")
# Plugins the benchmarks do not need: hypothesis costs seconds to import, and the unraisable-exception
# check runs gc.collect() five times at exit (over 10 s with torch loaded on a busy 2-core machine).
ARGS=(--benchmark-only -q -rfEs -p no:cacheprovider -p no:hypothesispytest -p no:unraisableexception
      --bench-scope "$SCOPE" --bench-jsonl "$WORK/bench.jsonl" --benchmark-columns=min,median,rounds
      ${FASTMAE_REPORT_BENCH_K:+-k "$FASTMAE_REPORT_BENCH_K"})
# bench NAME NUM DEN SLACK TITLE FILES...: a benchmark step of NUM/DEN of the seconds left; its
# --bench-budget leaves SLACK seconds (at most a third) for the last case started in time.
bench() {
    local t=$(share "$2" "$3")
    bounded "$t" "$1" "$5" $PY -m pytest "${@:6}" "${ARGS[@]}" --bench-budget "$(( t - (t / 3 < $4 ? t / 3 : $4) ))"
}
bench ops 2 5 30 "per-op benchmarks, scope $SCOPE, headline shape first" "${OP_FILES[@]}"
bench data 2 9 10 "resized_crop and the data pipeline" "${DATA_FILES[@]}"
bench train_step 1 1 30 "training-step benchmarks: ${REST[*]}" "${REST[@]}"

step "report: python3 -m benchmarks.report"
timeout --kill-after=2 $(( RESERVE_S - 5 )) $PY -m benchmarks.report --workdir "$WORK" --out "$RESULTS_DIR" \
    >"$WORK/report.log" 2>&1
RC=$?
RESULT=$(sed -n 's/^results file: //p' "$WORK/report.log" | tail -n 1)
deliver ${RESULT:+"$RESULT" "${RESULT%.json}.md"}
if [ "$RC" -ne 0 ] || [ -z "$RESULT" ]; then
    tail -n 20 "$WORK/report.log"
    step "the report failed (exit $RC): the raw results are in ${OUT:+$OUT/}logs.tar.gz"
    exit 2
fi
step "done in $(( $(date +%s) - START ))s: $RESULT and its .md${OUT:+, copied to $OUT with logs.tar.gz}"
cat "${RESULT%.json}.md"
