#!/usr/bin/env bash
# The paper's experiments at full scale on one H200, in calls of at most 10 minutes (issue #7):
#   OUT=DIR bash scripts/gpu_claims.sh lm                 `wm bench lm` alone (its throughputs must not share the GPU)
#   OUT=DIR bash scripts/gpu_claims.sh position+mqar      `wm bench position`, and `wm bench mqar` with one process per
#                                                          cell of the paper (MQAR's small models leave the GPU idle
#                                                          between kernel launches, so the processes run side by side)
# Results: DIR/claims.tgz (each run's folder: results.json / results.md / PNG / log) and DIR/summary.log.
# Every MQAR process rewrites its results after each finished run, so a process cut by the time limit keeps them.
# Time limits (seconds): CALL_S for the whole call (default 560); MQAR_BUDGET_S per cell (default 60% of CALL_S: no run
# starts after 1.1x the budget, and a run in progress may need a while to finish).
set -uo pipefail
OUT=${OUT:-out}
MODE=${1:?mode: lm or position+mqar}
CALL_S=${CALL_S:-560}
START=$(date +%s)
WORK=$(mktemp -d)
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
mkdir -p "$OUT"

bench() {  # bench DIRNAME SECONDS NAME ARGS... -> $WORK/DIRNAME with results and run.log
  local dir=$1 seconds=$2
  shift 2
  mkdir -p "$WORK/$dir"
  timeout "$seconds" $PY -m wonderful_matrices.bench "$@" --out "$WORK/$dir" > "$WORK/$dir/run.log" 2>&1
  echo "rc=$? after $(( $(date +%s) - START )) s" >> "$WORK/$dir/run.log"
}

{
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  case "$MODE" in
    lm)
      bench lm $(( CALL_S - 10 )) lm
      ;;
    position+mqar)
      bench position $(( CALL_S - 10 )) position &
      for cell in 256:64 256:128 512:128 1024:128 2048:128 2048:256; do
        bench "mqar_${cell/:/_}" $(( CALL_S - 10 )) mqar --cells "$cell" --budget-s "${MQAR_BUDGET_S:-$(( CALL_S * 6 / 10 ))}" &
      done
      wait
      ;;
    *) echo "unknown mode $MODE"; exit 2 ;;
  esac
  for log in "$WORK"/*/run.log; do echo "== $log"; grep -v Warning "$log" | tail -n 25; done
} 2>&1 | tee "$OUT/summary.log"
tar czf "$OUT/claims.tgz" --exclude=cache -C "$WORK" .
