#!/usr/bin/env bash
# One GPU call that checks every fast path and times the headline shapes, in about 7 minutes at most:
#   CUDA parity tests (SSD, DMA incl. selection and fused decode, product keys / expert mixture) against the
#   float64 oracles, then SSD triton at the paper's shape and DMA at T = 16K and 64K-context decode.
# From the repository root: OUT=DIR bash scripts/gpu_check.sh  ->  DIR/gpu_check.log, DIR/gpu_check.tgz
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
RES=$(mktemp -d)
LOG="$OUT/gpu_check.log"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
status=()

stage() {  # stage NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  echo "=== $name (timeout ${limit}s)" | tee -a "$LOG"
  local start=$SECONDS
  timeout --kill-after=5 "$limit" "$@" > "$RES/$name.log" 2>&1
  local rc=$?
  tail -n "${TAIL:-6}" "$RES/$name.log" | tee -a "$LOG"
  status+=("$name: exit $rc after $((SECONDS - start)) s$([ $rc -eq 124 ] && echo ' (timed out)')")
}

nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$LOG"
PYTEST="$PY -m pytest -q -p no:cacheprovider -rfE"
stage test_ssd "${T_SSD:-80}" $PYTEST tests/ops/test_ops_cuda.py -k ssd
stage test_dma "${T_DMA:-120}" $PYTEST tests/ops/test_ops_cuda.py tests/ops/test_dma_select.py -k "dma or select"
stage test_moe "${T_MOE:-70}" $PYTEST tests/ops/test_ops_cuda.py -k "product_key or mixture or layers"
stage bench_ssd "${T_BENCH_SSD:-45}" $PY scripts/gpu_ssd.py triton "$RES/ssd_triton.json"
TAIL=40 stage bench_dma "${T_BENCH_DMA:-110}" $PY -m wonderful_matrices.bench.dma --out "$RES/dma" --lengths 16384 --batches 1 8
tar czf "$OUT/gpu_check.tgz" -C "$RES" . 2>>"$LOG"
echo "=== stages" | tee -a "$LOG"; printf '%s\n' "${status[@]}" | tee -a "$LOG"
grep -hE "^(FAILED|ERROR)" "$RES"/test_*.log | head -30 | tee -a "$LOG"
