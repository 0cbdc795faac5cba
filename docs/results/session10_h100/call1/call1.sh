#!/usr/bin/env bash
# session 10 call 1: eager decoding diagnosis (#18), packed windowed DMA forward profile (#14), 16K compiled tokens/s (#17)
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=$PWD/.triton_cache
nvidia-smi --query-gpu=name --format=csv,noheader
echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD || echo ' (+ uncommitted changes)')"
cp tmp_gpu/*.py tmp_gpu/*.sh $OUT/ 2>/dev/null
timeout 200 python3 tmp_gpu/eager_diag.py cheems-base > $OUT/eager_diag.log 2>&1
echo "eager diag rc $? at $SECONDS s"; grep -E "^[A-F]|graphed|launches" $OUT/eager_diag.log | cut -c1-200
timeout 150 python3 tmp_gpu/dma_packed_prof.py > $OUT/dma_packed_prof.log 2>&1
echo "dma prof rc $? at $SECONDS s"; grep -E "^==|keys" $OUT/dma_packed_prof.log | cut -c1-200
left=$((575 - SECONDS))
timeout $left python3 scripts/train_throughput.py --out $OUT/tp16k --compiled --seq-len 16384 \
  --variants llama-base cheems-base > $OUT/tp16k.log 2>&1
echo "16K throughput rc $? at $SECONDS s"; grep "^{" $OUT/tp16k.log | cut -c1-220; grep -iE "error" $OUT/tp16k.log | head -3 | cut -c1-200
