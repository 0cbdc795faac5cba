#!/usr/bin/env bash
# One GPU call that times the headline shapes and then checks every fast path, in about 5 minutes:
#   1. SSD triton at the paper's shape (per kernel; scripts/gpu_ssd.py triton),
#   2. DMA at T = 16K (window 2048 vs cuDNN / Flex) and one-token decode at 64K context (bench.dma subset),
#   3. the CUDA parity tests of SSD, DMA (incl. window selection and fused decode) and the expert mixture against
#      the float64 oracles, and GraphedDecoder against eager decoding, in parallel processes (Triton compiles on
#      the CPU).
# From the repository root: OUT=DIR bash scripts/gpu_check.sh  ->  DIR/gpu_check.log, DIR/gpu_check.tgz
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
RES=$(mktemp -d)
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 T_SWEEP=${T_SWEEP:-25}
PY=${PYTHON:-python3}
{
  date -u
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  echo "=== ssd timing"
  timeout "${T_SSD:-80}" $PY scripts/gpu_ssd.py triton "$RES/ssd_triton.json" 2>&1 | tail -45
  echo "rc=${PIPESTATUS[0]}"
  echo "=== dma timing"
  timeout "${T_DMA:-100}" $PY -m wonderful_matrices.bench.dma --out "$RES/dma" --lengths 16384 --batches 1 8 \
    2>&1 | grep -E "^\|" | tail -30
  echo "rc=${PIPESTATUS[0]}"
  echo "=== parity tests (parallel)"
  i=0
  for k in "test_ssd_cuda" "all_gradients and 1000-64" "all_gradients and 513-128" "all_gradients and 2048-256" \
           "all_gradients and 1-256-4" "test_dma_cuda or test_dma_triton_cuda" "fused_decode or never_syncs" "graphed" \
           "product_key or mixture or layers"; do
    i=$((i + 1))
    ( timeout "${T_TESTS:-120}" $PY -m pytest -q -p no:cacheprovider -rfE tests/ops/test_ops_cuda.py -k "$k" \
        > "$RES/tests_$i.log" 2>&1; echo "rc=$? ($k)" >> "$RES/tests_$i.log" ) &
  done
  ( timeout "${T_TESTS:-120}" $PY -m pytest -q -p no:cacheprovider -rfE tests/ops/test_dma_select.py \
      > "$RES/tests_select.log" 2>&1; echo "rc=$? (select)" >> "$RES/tests_select.log" ) &
  wait
  for f in "$RES"/tests_*.log; do grep -E "^(FAILED|ERROR)|passed|failed|rc=" "$f" | tail -8; done
  date -u
} 2>&1 | tee "$OUT/gpu_check.log"
tar czf "$OUT/gpu_check.tgz" -C "$RES" .
