#!/usr/bin/env bash
# The GPU report in one call (benchmarks/NOTES.md, "The GPU report": the steps, the time shares, the hooks):
#     bash benchmarks/gpu_report.sh      # OUT=<folder> collects the results file, its summary, logs.tar.gz
# The environment, the offline install (a failure only noted), the kernel tests, the per-op benchmarks,
# resized_crop and the data pipeline, the training step, then python3 -m benchmarks.report, inside ONE
# deadline; each step delivered to $OUT as it ends. Exit 0 when the report was written, 2 when not.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# Started from a pytest-xdist worker (its own test does that), the benchmarks would see the worker's
# variables and pytest-benchmark would turn itself off: this run is not part of that session.
unset PYTEST_XDIST_WORKER PYTEST_XDIST_WORKER_COUNT PYTEST_XDIST_TESTRUNUID
START=$(date +%s)
DEADLINE_S=${FASTMAE_REPORT_DEADLINE_S:-520}
RESERVE_S=15  # the report, the copy to $OUT
FLOOR_S=20    # Python, torch and pytest start in well under that
# Weights of the steps after the install (what they come to: NOTES.md, "Time").
TESTS_W=25 OPS_W=30 DATA_W=10 TRAIN_W=35
WORK=${FASTMAE_REPORT_WORKDIR:-$(mktemp -d "${TMPDIR:-/tmp}/fastmae-report.XXXXXX")}
RESULTS_DIR=${FASTMAE_REPORT_RESULTS_DIR:-benchmarks/results}
PY=${PYTHON:-python3}
mkdir -p "$WORK"

step() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$WORK/steps.log" >&2; }
# Seconds left before the deadline, less the report's reserve.
left() { echo $(( START + DEADLINE_S - RESERVE_S - $(date +%s) )); }
# share WEIGHT REST: a step's seconds, WEIGHT / REST of those left (REST: its weight and the later
# steps'), at least FLOOR_S (when that many are left).
share() {
    local l s
    l=$(left)
    s=$(( l * $1 / $2 ))
    (( s < FLOOR_S )) && s=$(( l < FLOOR_S ? l : FLOOR_S ))
    echo $(( s > 0 ? s : 0 ))
}
# bounded SECONDS NAME CMD...: CMD for at most SECONDS (never past the deadline): SIGINT at the limit less
# a grace period, SIGKILL at the limit; output to $WORK/NAME.log, exit code to $WORK/NAME.rc.
bounded() {
    local total=$1 name=$2 l grace
    shift 2
    l=$(left)
    (( total > l )) && total=$l
    if (( total < 2 )); then
        step "$name: not run, no time left before the deadline"
        return
    fi
    grace=$(( total / 4 > 10 ? 10 : (total / 4 > 0 ? total / 4 : 1) ))
    # stderr of the group dropped: bash's "Killed" line when timeout kills its own process group
    { timeout --signal=INT --kill-after="$grace" "$(( total - grace ))" "$@" >"$WORK/$name.log" 2>&1; } 2>/dev/null
    echo $? >"$WORK/$name.rc"
    tail -n 2 "$WORK/$name.log" | cut -c1-200 >&2
}
# What exists so far, to $OUT: logs.tar.gz (every file of $WORK), then the results file and summary.
deliver() {
    [ -n "${OUT:-}" ] || return 0
    mkdir -p "$OUT"
    tar -czf "$OUT/logs.tar.gz.part" -C "$WORK" . && mv -f "$OUT/logs.tar.gz.part" "$OUT/logs.tar.gz"
    local f
    for f in "$@"; do cp -f "$f" "$OUT/"; done
}

step "environment: python3 -m benchmarks.harness (deadline ${DEADLINE_S}s, work dir $WORK)"
bounded 60 env $PY -m benchmarks.harness --json "$WORK/env.json"
deliver

if [ "${FASTMAE_REPORT_SKIP_INSTALL:-0}" = 1 ]; then
    INSTALL="skipped (FASTMAE_REPORT_SKIP_INSTALL=1): fastmae imported from the source tree"
else
    CMD=${FASTMAE_REPORT_INSTALL_CMD:-"$PY -m pip install -e . --no-deps --no-build-isolation --no-index"}
    step "install: $CMD"
    bounded 90 install bash -c "$CMD"
    RC=$(cat "$WORK/install.rc" 2>/dev/null || echo none)
    if [ "$RC" = 0 ]; then
        INSTALL="installed: $CMD"
    else
        INSTALL="install failed (exit $RC, install.log): fastmae imported from the source tree"
    fi
fi
if [ "${INSTALL%%:*}" != installed ]; then
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # fastmae/kernels links to kernels/: no build needed
    INSTALL="$INSTALL (PYTHONPATH=$PWD)"
fi
echo "$INSTALL" >"$WORK/install.txt"
step "$INSTALL"

DEVICE=$($PY -c "import json, sys; print(json.load(open(sys.argv[1]))['device_type'])" "$WORK/env.json" 2>/dev/null \
    || { $PY -c "import torch, sys; sys.exit(not torch.cuda.is_available())" && echo cuda || echo cpu; })
if [ "$DEVICE" = cuda ]; then
    SCOPE=${FASTMAE_REPORT_SCOPE:-report}
    export TRITON_INTERPRET=0  # real compiles; tests/conftest.py puts the tests' tensors on the GPU
else
    SCOPE=cpu
    unset TRITON_INTERPRET  # tests/conftest.py turns the interpreter on
fi

T=$(share $TESTS_W $(( TESTS_W + OPS_W + DATA_W + TRAIN_W )))
if [ -n "${FASTMAE_REPORT_TESTS:-}" ]; then
    read -r -a TESTS <<<"$FASTMAE_REPORT_TESTS"
else
    LAST=(tests/test_model_triton.py tests/test_hf_integration.py tests/test_properties.py)  # whole model, properties
    mapfile -t TESTS < <(grep -l requires_kernels tests/test_*.py | grep -v -x -F "${LAST[@]/#/-e}";
                         grep -l requires_kernels "${LAST[@]}" 2>/dev/null)
fi
X=()
if $PY -c "import xdist" 2>/dev/null; then
    W=$(( $(nproc) / 2 > 8 ? 8 : $(nproc) / 2 ))
    (( W >= 2 )) && X+=(-n "$W")
fi
$PY -c "import pytest_timeout" 2>/dev/null && X+=(--timeout "$(( T / 2 > 30 ? T / 2 : 30 ))")
step "kernel tests on $DEVICE (${T}s): pytest ${TESTS[*]} ${X[*]}"
bounded "$T" kernel_tests $PY -m pytest "${TESTS[@]}" -v -rfE -p no:cacheprovider "${X[@]}"
deliver

export TRITON_INTERPRET=0  # the benchmarks never run under the interpreter (CPU: the torch backend)
mapfile -t OP_FILES < <(grep -l "mark.bench_op" benchmarks/test_bench_*.py)  # the per-op benchmarks
DATA_FILES=(benchmarks/test_bench_resized_crop.py benchmarks/test_bench_data.py)
REST=()  # the training step, and any benchmark file none of the steps before names
for f in benchmarks/test_bench_*.py; do
    case " ${OP_FILES[*]} ${DATA_FILES[*]} " in *" $f "*) ;; *) REST+=("$f") ;; esac
done
# Plugins the benchmarks do not need: hypothesis costs seconds to import, and the unraisable-exception
# check runs gc.collect() five times at exit (over 10 s with torch loaded on a busy 2-core machine).
ARGS=(--benchmark-only -q -rfEs -p no:cacheprovider -p no:hypothesispytest -p no:unraisableexception
      --bench-scope "$SCOPE" --bench-jsonl "$WORK/bench.jsonl" --benchmark-columns=min,median,rounds
      ${FASTMAE_REPORT_BENCH_K:+-k "$FASTMAE_REPORT_BENCH_K"})
# bench NAME WEIGHT REST SLACK TITLE FILES...: a benchmark step of WEIGHT / REST of the seconds left; its
# --bench-budget leaves SLACK seconds (at most a third) for the last case started in time.
bench() {
    local t
    t=$(share "$2" "$3")
    step "$5 (${t}s)"
    bounded "$t" "$1" $PY -m pytest "${@:6}" "${ARGS[@]}" --bench-budget "$(( t - (t / 3 < $4 ? t / 3 : $4) ))"
    deliver
}
bench ops $OPS_W $(( OPS_W + DATA_W + TRAIN_W )) 30 "per-op benchmarks, scope $SCOPE, headline shape first" \
    "${OP_FILES[@]}"
bench data $DATA_W $(( DATA_W + TRAIN_W )) 10 "resized_crop and the data pipeline" "${DATA_FILES[@]}"
bench train_step $TRAIN_W $TRAIN_W 30 "training-step benchmarks: ${REST[*]}" "${REST[@]}"

step "report: python3 -m benchmarks.report"
$PY -m benchmarks.report --workdir "$WORK" --out "$RESULTS_DIR" >"$WORK/report.log" 2>&1
RC=$?
RESULT=$(sed -n 's/^results file: //p' "$WORK/report.log" | tail -n 1)
if [ "$RC" -ne 0 ] || [ -z "$RESULT" ]; then
    deliver
    tail -n 20 "$WORK/report.log"
    step "the report failed (exit $RC): the raw results are in ${OUT:+$OUT/}logs.tar.gz"
    exit 2
fi
deliver "$RESULT" "${RESULT%.json}.md"
step "done in $(( $(date +%s) - START ))s: $RESULT and its .md${OUT:+, copied to $OUT with logs.tar.gz}"
cat "${RESULT%.json}.md"
