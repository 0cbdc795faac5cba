#!/usr/bin/env bash
# The paper's experiments at full scale on one H200, in calls of at most 10 minutes (issue #7):
#   OUT=DIR bash scripts/gpu_claims.sh lm+mqar CELLS    lm alone on the GPU (its throughputs must not share it),
#                                                         then `wm bench mqar --cells CELLS` in the time left
#   OUT=DIR bash scripts/gpu_claims.sh position+mqar CELLS   position and mqar --cells CELLS side by side
# Each experiment writes results.json / results.md / its PNG into DIR/<name>/ and its log into DIR/<name>.log.
# Budgets (seconds) come from CALL_S (the whole call, default 570) and MQAR_BUDGET_S (default: what is left).
set -uo pipefail
OUT=${OUT:-out}
MODE=${1:?mode: lm+mqar or position+mqar}
CELLS=${2:?cells for mqar, e.g. 256:64,256:128}
CALL_S=${CALL_S:-570}
START=$(date +%s)
WORK=$(mktemp -d)
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/device.txt"

bench() {  # bench NAME SECONDS ARGS... -> $WORK/NAME (cache and all), log and result files into $OUT
  local name=$1 seconds=$2
  shift 2
  timeout "$seconds" $PY -m wonderful_matrices.bench "$name" --out "$WORK/$name" "$@" > "$OUT/$name.log" 2>&1
  echo "rc=$? after $(( $(date +%s) - START )) s" >> "$OUT/$name.log"
  mkdir -p "$OUT/$name"
  cp "$WORK/$name"/results.json "$WORK/$name"/results.md "$WORK/$name"/*.png "$OUT/$name"/ 2>/dev/null
}
left() { echo $(( CALL_S - ($(date +%s) - START) )); }

case "$MODE" in
  lm+mqar)
    bench lm $(( CALL_S - 150 ))
    bench mqar $(( $(left) - 10 )) --cells "$CELLS" --budget-s "${MQAR_BUDGET_S:-$(( $(left) - 60 ))}"
    ;;
  position+mqar)
    bench position $(( CALL_S - 10 )) &
    bench mqar $(( CALL_S - 10 )) --cells "$CELLS" --budget-s "${MQAR_BUDGET_S:-$(( CALL_S - 90 ))}" &
    wait
    ;;
  *) echo "unknown mode $MODE"; exit 2 ;;
esac
tail -n 3 "$OUT"/*.log
