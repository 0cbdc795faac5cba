#!/usr/bin/env bash
# DMA on one GPU, from the repository root, about 7-12 minutes (the first calls autotune the windowed kernels):
#  (a) the CUDA DMA tests — tests/ops/test_dma_cuda.py (Triton windowed kernels, FlexAttention no-window
#      path, packed documents, decode steps, all against the float64 oracle) and tests/ops/test_dma_select.py —
#      complete log in $OUT/dma_cuda_tests.log;
#  (b) bench/dma.py at full scale (T = 4K, 16K, 64K, 128K: triton, torch, no window, SDPA cuDNN, Flex; the
#      selection stage; packed vs unpacked at 16K; decode at 64K context, batches 1 and 8) writing
#      $OUT/dma/results.json and results.md, its log in $OUT/dma_bench.log.
# Each stage runs under `timeout`; a failure does not stop the next; exit status non-zero if either failed.
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT/dma"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
status=0
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  timeout "${TEST_TIMEOUT:-600}" python3 -m pytest -q -p no:cacheprovider -rfEs \
    tests/ops/test_dma_cuda.py tests/ops/test_dma_select.py
} 2>&1 | tee "$OUT/dma_cuda_tests.log" | tail -15 || status=1
timeout "${BENCH_TIMEOUT:-240}" python3 -m wonderful_matrices.bench.dma --out "$OUT/dma" --batches 1 8 \
  2>&1 | tee "$OUT/dma_bench.log" | grep -v "^{" || status=1
exit $status
