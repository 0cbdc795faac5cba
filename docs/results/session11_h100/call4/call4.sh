#!/usr/bin/env bash
# Session 11 call 4: CUDA tests of the changed kernels, block check, #13 DMA bench at 16K/64K, #17 4K compiled tokens/s
set -u
export PYTHONPATH=$PWD/src TRITON_CACHE_DIR=$PWD/.triton_cache PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
W=/tmp/s11/w4; mkdir -p $W; cp tmp_gpu/call4.sh tmp_gpu/block_check.py $W/
nvidia-smi --query-gpu=name --format=csv,noheader > $W/device.txt
echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD || echo ' (+ uncommitted changes)')" >> $W/device.txt
timeout 210 python -m pytest -n 8 --dist loadgroup -p no:cacheprovider -rfE -v --durations=20 \
  tests/ops/test_dma_cuda.py tests/ops/test_dma_select.py tests/ops/test_experts_cuda.py \
  -k "triton_cuda or packed_cuda or cuda_equals or product_key_triton" > $W/cuda_tests.log 2>&1
echo "tests rc $? at $SECONDS s"; tail -3 $W/cuda_tests.log | cut -c1-200
timeout 60 python tmp_gpu/block_check.py > $W/block_check.log 2>&1; echo "block check rc $? at $SECONDS s"
timeout 110 python -m wonderful_matrices.bench.dma --out $W/dma --lengths 16384 65536 --batches --packed-length 0 --kernels > $W/dma.log 2>&1
echo "dma rc $? at $SECONDS s"
left=$((505 - SECONDS))
timeout $left python scripts/train_throughput.py --out $W/tp4k --compiled-only --seq-len 4096 \
  --variants llama-base cheems-base > $W/tp4k.log 2>&1; echo "tp4k rc $? at $SECONDS s"
tar -C /tmp/s11 -cJf $OUT/call4.tar.xz w4
cat $W/block_check.log | grep -v Warn | cut -c1-220
grep "^| train" $W/dma/results.md | awk -F'|' '{print $3, $6, $8, $9, $10, $11, $13}'
grep "^{" $W/tp4k.log | cut -c1-200
