#!/usr/bin/env bash
# Session 14 call 2: which gradients compiled cheems training gets wrong on CUDA (diag_compiled.py), then the DMA
# CUDA suite (complete log of this code), then the models suite if time is left.
set -u
LIMIT=${LIMIT:-585}
export PYTHONPATH=$PWD/src TRITON_CACHE_DIR=$PWD/.triton_cache PYTHONUNBUFFERED=1
W=/tmp/s14/c2; mkdir -p $W $TRITON_CACHE_DIR; cp tmp_gpu/s14_call2.sh tmp_gpu/diag_compiled.py $W/
nvidia-smi --query-gpu=name --format=csv,noheader > $W/device.txt
echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD || echo ' (+ uncommitted changes)')" >> $W/device.txt
OUT_SAVE=$OUT
pack() { tar -C /tmp/s14 -cJf $OUT_SAVE/c2.tar.xz c2; }
PYTHONPATH=$PWD/src:$PWD/tests timeout 150 python tmp_gpu/diag_compiled.py > $W/diag_compiled.log 2>&1; echo "diag rc $? at $SECONDS s"; pack
grep -v "Warn\|warn\|triton_usable\|return triton\|^\s*\^\|This call\|File \"\|^\s*$" $W/diag_compiled.log | cut -c1-150 | head -60
l=$((LIMIT - SECONDS - 20))
[ $l -gt 60 ] && OUT=$W AREA=dma BUDGET=$l TIMEOUT=$l bash scripts/gpu_check.sh > $W/gpu_check_dma.out 2>&1; echo "dma rc $? at $SECONDS s"; pack
l=$((LIMIT - SECONDS - 20))
[ $l -gt 100 ] && OUT=$W AREA=models BUDGET=$l TIMEOUT=$l bash scripts/gpu_check.sh > $W/gpu_check_models.out 2>&1; echo "models rc $? at $SECONDS s"; pack
tail -8 $W/gpu_check_dma.out; tail -8 $W/gpu_check_models.out 2>/dev/null
