#!/usr/bin/env bash
# SSD on one GPU, run from the repository root: CUDA parity tests of the triton (and torch) backend against
# the float64 CPU oracle, then fwd / fwd+bwd at the paper's shape for triton (with a per-kernel breakdown),
# torch eager, torch.compile and mamba_ssm (if installed), and a short table last.
# Everything goes to $OUT: gpu_ssd.log (all output) and gpu_ssd.tgz (the JSON rows). Each stage runs under
# `timeout` and the script continues after a failure; whole run < 3 minutes (override T_TESTS, T_BENCH).
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
RES=$(mktemp -d)
LOG="$OUT/gpu_ssd.log"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  echo "=== stage: CUDA parity tests (ssd)"
  timeout "${T_TESTS:-60}" $PY -m pytest -q -p no:cacheprovider tests/ops/test_ops_cuda.py -k ssd 2>&1 | tail -30
  echo "rc=${PIPESTATUS[0]}"
  for stage in triton:40 torch:25 mamba:25 compiled:30; do
    name=${stage%%:*}
    echo "=== stage: bench $name"
    timeout "${T_BENCH:-${stage##*:}}" $PY scripts/gpu_ssd.py "$name" "$RES/$name.json" 2>&1 | tail -40
    echo "rc=${PIPESTATUS[0]}"
  done
  echo "=== table"
  $PY scripts/gpu_ssd.py table "$RES"
} 2>&1 | tee "$LOG"
tar czf "$OUT/gpu_ssd.tgz" -C "$RES" .
