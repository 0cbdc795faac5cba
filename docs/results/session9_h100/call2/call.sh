#!/usr/bin/env bash
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=$PWD/.triton_cache
echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD || echo ' (+ uncommitted changes)')"; git diff --stat
timeout 150 python3 -m pytest -n 4 -p no:cacheprovider -rfE -v -k "packed_cuda or no_window_flex" tests/ops/test_dma_cuda.py > $OUT/cuda_dma_packed_flex.log 2>&1
echo "flex tests rc $? at $SECONDS s"; grep -E "passed|failed|FAILED|ERROR" $OUT/cuda_dma_packed_flex.log | tail -12 | cut -c1-200
timeout $((560 - SECONDS)) python3 scripts/train_throughput.py --out $OUT/tp_compiled --compiled \
  --variants cheems-base llama-base > $OUT/tp_compiled.log 2>&1
echo "compiled throughput rc $? at $SECONDS s"; grep "^{" $OUT/tp_compiled.log | cut -c1-200; grep -iE "error" $OUT/tp_compiled.log | head -3
