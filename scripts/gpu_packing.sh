#!/usr/bin/env bash
# Packed documents (seq_idx) on one GPU, run from the repository root (about 4 minutes):
# 1. bench: SSD triton at the paper's shape (8 x 4096 tokens, 64 heads x 64, state 128, chunk 256, bf16), forward and
#    forward+backward, unpacked and packed (documents of 1..1024 tokens) side by side with the overhead in percent
#    (the target: <= 10%);
# 2. CUDA parity tests: SSD with seq_idx (triton and torch, float32 and bf16) against each document alone, and a
#    packed row of every tiny preset against its documents alone, and the DMA op's packed tests.
# Everything goes to $OUT: gpu_packing.log, and packing/results.json|md (the bench rows).
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
LOG="$OUT/gpu_packing.log"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  echo "=== stage: bench ssd --packed"
  timeout "${T_BENCH:-120}" $PY -m wonderful_matrices.bench.ssd --packed --out "$OUT/packing" 2>&1 | tail -20
  echo "rc=${PIPESTATUS[0]}"
  echo "=== stage: CUDA packed parity tests"
  timeout "${T_TESTS:-150}" $PY -m pytest -q -p no:cacheprovider -o console_output_style=classic -rfE \
      tests/ops/test_ops_cuda.py -k "packed" 2>&1 | tail -25
  echo "rc=${PIPESTATUS[0]}"
  date -u
} 2>&1 | tee "$LOG"
