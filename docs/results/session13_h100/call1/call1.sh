#!/usr/bin/env bash
# Session 13 call 1 (whatever fits LIMIT seconds, most informative first): the DMA bench (the windowed path on
# FlexAttention over gathered lists beside the Triton kernels; no-window rows after the scan fix and the column-sum
# bias gradient), the new DMA paths' CUDA tests, top-k insertion vs bitonic, experts kernel times at 2^20, CDMoE at
# 2^20, the experts CUDA suite
set -u
LIMIT=${LIMIT:-580}
export PYTHONPATH=$PWD/src TRITON_CACHE_DIR=$PWD/.triton_cache PYTHONUNBUFFERED=1
W=/tmp/s13/w1; mkdir -p $W $TRITON_CACHE_DIR; cp tmp_gpu/call1.sh $W/
nvidia-smi --query-gpu=name --format=csv,noheader > $W/device.txt
echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD || echo ' (+ uncommitted changes)')" >> $W/device.txt
python -c "import torch, triton; print(torch.__version__, triton.__version__)" >> $W/device.txt
python -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" .gpu_cache/triton_cache.tar.xz $TRITON_CACHE_DIR
OUT_SAVE=$OUT
left() { local l=$((LIMIT - SECONDS)); [ $l -lt $1 ] && echo $l || echo $1; }
timeout $(left 230) python -m wonderful_matrices.bench.dma --out $W/dma --lengths 16384 65536 --batches --packed-length 0 --kernels > $W/dma.log 2>&1; echo "dma rc $? at $SECONDS s"
timeout $(left 130) python -m pytest -q tests/ops/test_dma_cuda.py -p no:cacheprovider -k "windowed_flex or no_window_flex or packed" > $W/dma_new_paths_cuda.log 2>&1; echo "dma new paths rc $? at $SECONDS s"
timeout $(left 50) python scripts/topk_bench.py > $W/topk_bench.log 2>&1; echo "topk rc $? at $SECONDS s"
timeout $(left 45) python scripts/experts_kernel_times.py --shape target > $W/experts_kernel_times_target.log 2>&1; echo "ekt target rc $? at $SECONDS s"
timeout $(left 30) python -m wonderful_matrices.bench.cdmoe_target --backends triton --counts 1024,1048576 --no-moe --out $W/cd > $W/cdmoe_target.log 2>&1; echo "cd rc $? at $SECONDS s"
l=$(left 200)
[ $l -gt 40 ] && OUT=$W AREA=experts BUDGET=$l TIMEOUT=$((l - 5)) CACHE_IN=/nonexistent bash scripts/gpu_check.sh > $W/gpu_check_experts.out 2>&1; echo "experts rc $? at $SECONDS s"
tar -C /tmp/s13 -cJf $OUT_SAVE/call1.tar.xz w1
grep "^{" $W/dma.log | grep -v "kernel" | cut -c1-330
tail -5 $W/dma_new_paths_cuda.log
cat $W/topk_bench.log | tail -12
grep -v "^\s*$" $W/experts_kernel_times_target.log | cut -c1-160 | tail -16
grep -i "ms\|wall" $W/cdmoe_target.log | cut -c1-200 | tail -8
tail -3 $W/gpu_check_experts.out
