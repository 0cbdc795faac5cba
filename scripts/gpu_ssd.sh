#!/usr/bin/env bash
# SSD on one GPU, run from the repository root: CUDA parity tests of the triton (and torch) backend against
# the float64 CPU oracle, then fwd / fwd+bwd at the paper's shape for triton (with a per-kernel breakdown),
# torch eager, torch.compile and mamba_ssm (if installed), and a short table last.
# Everything goes to $OUT: gpu_ssd.log (all output) and gpu_ssd.tgz (the JSON rows). Each stage runs under
# `timeout` and the script continues after a failure; at most 50+35+20+15+20+45 s = 3 minutes of stages
# (override T_TESTS, T_BENCH). The torch.profiler table of the eager torch backend shows which ops dominate.
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
  timeout "${T_TESTS:-50}" $PY -m pytest -q -p no:cacheprovider tests/ops/test_ops_cuda.py -k ssd 2>&1 | tail -30
  echo "rc=${PIPESTATUS[0]}"
  for stage in triton:35 torch:20 profile:15 mamba:20 compiled:45; do
    name=${stage%%:*}
    echo "=== stage: bench $name"
    timeout "${T_BENCH:-${stage##*:}}" $PY scripts/gpu_ssd.py "$name" "$RES/$name.json" 2>&1 | tail -40
    echo "rc=${PIPESTATUS[0]}"
  done
  echo "=== table"
  $PY scripts/gpu_ssd.py table "$RES"
} 2>&1 | tee "$LOG"
tar czf "$OUT/gpu_ssd.tgz" -C "$RES" .
