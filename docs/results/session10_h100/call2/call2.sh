#!/usr/bin/env bash
# session 10 call 2: packed SSD/DMA with GPU busy times (#14), then the CUDA suite's first half (ssd, dma)
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=$PWD/.triton_cache
echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD || echo ' (+ uncommitted changes)')"
cp tmp_gpu/call2.sh $OUT/
STAGES="ssd dma" T_SSD=130 T_DMA=130 OUT=$OUT bash scripts/gpu_packing.sh > $OUT/packing_stdout.log 2>&1
echo "packing at $SECONDS s"; grep -E "^\||rc=" $OUT/packing_stdout.log | cut -c1-400
AREA=half1 BUDGET=$((582 - SECONDS)) OUT=$OUT bash scripts/gpu_check.sh > $OUT/check_stdout.log 2>&1
echo "half1 rc $? at $SECONDS s"; tail -25 $OUT/check_stdout.log | cut -c1-250
