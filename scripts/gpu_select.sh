#!/usr/bin/env bash
# The windowed DMA selection on one GPU (issue #13), from the repository root, about 2-4 minutes:
#  (a) the CUDA selection tests — tests/ops/test_dma_select.py (the Triton selection against the torch path on the
#      same GPU at 16K and 64K, and against the CPU at 8K; the CPU cases too) and the windowed-kernel parity tests of
#      tests/ops/test_dma_cuda.py that run through it (Triton window, torch window, packed documents) — complete
#      log in $OUT/select_cuda_tests.log;
#  (b) bench/dma.py --selection-only at T = 4K, 16K, 64K, 128K (B1, 16 KV heads, w = 2048): the Triton path's
#      selection (live_keys, now its kernels), the torch operations it replaced (live_keys_torch) and select_blocks
#      (to 32K) — $OUT/select/results.json and results.md, log $OUT/select_bench.log;
#  (c) only with WITH_TRAIN=1 (a few minutes more): the training rows at 16K (windowed Triton DMA forward and
#      forward+backward beside SDPA cuDNN and FlexAttention) in $OUT/train16k/.
# Each stage runs under `timeout`; a failure does not stop the next; exit status non-zero if any failed.
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT/select"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
status=0
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  timeout "${TEST_TIMEOUT:-300}" python3 -m pytest -q -p no:cacheprovider -rfEs tests/ops/test_dma_select.py \
    tests/ops/test_dma_cuda.py -k "not decode and not flex"
} 2>&1 | tee "$OUT/select_cuda_tests.log" | tail -15 || status=1
timeout "${BENCH_TIMEOUT:-180}" python3 -m wonderful_matrices.bench.dma --out "$OUT/select" --selection-only \
  2>&1 | tee "$OUT/select_bench.log" | grep -v "^{" || status=1
if [ "${WITH_TRAIN:-0}" = 1 ]; then
  mkdir -p "$OUT/train16k"
  timeout "${TRAIN_TIMEOUT:-300}" python3 -m wonderful_matrices.bench.dma --out "$OUT/train16k" --lengths 16384 \
    --batches --packed-length 0 2>&1 | tee "$OUT/train16k.log" | grep -v "^{" || status=1
fi
exit $status
