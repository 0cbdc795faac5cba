#!/usr/bin/env bash
# Session 7 call 2: training tokens/s (llama-base vs cheems-base with each expert-mixture backend, eager and
# compiled), then the packed-document benches (SSD, DMA).
set -uo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=$PWD/.triton_cache
nvidia-smi --query-gpu=name --format=csv,noheader
echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD || echo ' (+ uncommitted changes)')"
timeout 150 python3 scripts/train_throughput.py --out $OUT/tp_eager \
  --variants llama-base cheems-base cheems-base:cdmoe_backend=dense cheems-base:cdmoe_backend=triton \
  > $OUT/tp_eager.log 2>&1
echo "eager throughput rc $? at $SECONDS s"; cut -c1-200 $OUT/tp_eager/results.md 2>/dev/null; grep -iE "error" $OUT/tp_eager.log | head -3
timeout 240 python3 scripts/train_throughput.py --out $OUT/tp_compiled --compiled \
  --variants llama-base cheems-base > $OUT/tp_compiled.log 2>&1
echo "compiled throughput rc $? at $SECONDS s"; cut -c1-200 $OUT/tp_compiled/results.md 2>/dev/null; grep -iE "error" $OUT/tp_compiled.log | head -3
left=$((575 - SECONDS))
STAGES="ssd dma" T_SSD=$(( left / 2 )) T_DMA=$(( left / 2 - 10 )) OUT=$OUT bash scripts/gpu_packing.sh > /dev/null 2>&1
echo "packing benches done at $SECONDS s"; grep -vE "^\{|^ *$" $OUT/gpu_packing.log | tail -30
