#!/usr/bin/env bash
# No-window DMA as one fused SDPA call (ops/dma/biased_sdpa.py) on one GPU, from the repository root, < 4 minutes:
#  (a) its CUDA parity tests and the FlexAttention no-window tests beside them (tests/ops/test_dma_cuda.py -k
#      no_window), complete log in $OUT/biased_sdpa_tests.log;
#  (b) bench/dma.py at T = 4K and 16K, training rows only ("dma no window" = FlexAttention today,
#      "dma no window, biased sdpa", "sdpa causal (cudnn)", "flex causal"): $OUT/dma/results.json and
#      results.md, log in $OUT/biased_sdpa_bench.log.
# Each stage runs under `timeout`; a failure does not stop the next; exit status non-zero if either failed.
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT/dma"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
status=0
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  timeout "${TEST_TIMEOUT:-110}" python3 -m pytest -q -p no:cacheprovider -rfEs tests/ops/test_dma_cuda.py \
    -k no_window
} 2>&1 | tee "$OUT/biased_sdpa_tests.log" | tail -15 || status=1
timeout "${BENCH_TIMEOUT:-120}" python3 -m wonderful_matrices.bench.dma --out "$OUT/dma" --lengths 4096 16384 \
  --batches --packed-length 0 2>&1 | tee "$OUT/biased_sdpa_bench.log" | grep -v "^{" || status=1
exit $status
