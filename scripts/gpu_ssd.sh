#!/usr/bin/env bash
# SSD on one GPU, run from the repository root (must finish in < 3 minutes):
# 1. bench triton: fwd / fwd+bwd at the paper's shape, per-kernel times, every gradient's error against the
#    float32 torch backend, and a sweep of (num_warps, num_stages) for the matmul kernels (stops starting new
#    configs after T_SWEEP = 50 s);
# 2. CUDA parity tests (float64 oracle on the GPU), in 6 parallel pytest processes (Triton compiles on the CPU);
# 3. optional stages named in STAGES (default none; e.g. STAGES="torch:20 compiled:45 mamba:20 profile:15").
# Everything goes to $OUT: gpu_ssd.log (all output) and gpu_ssd.tgz (the JSON rows and the test logs).
# Stage limits: triton 90 s + tests 75 s (override T_TRITON, T_TESTS). The table comes last.
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
RES=$(mktemp -d)
LOG="$OUT/gpu_ssd.log"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 T_SWEEP=${T_SWEEP:-50}
PY=${PYTHON:-python3}
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  echo "=== stage: bench triton (per kernel, sweep)"
  timeout "${T_TRITON:-90}" $PY scripts/gpu_ssd.py triton "$RES/triton.json" 2>&1 | tail -40
  echo "rc=${PIPESTATUS[0]}"
  echo "=== stage: CUDA parity tests (ssd), 6 processes"
  i=0
  # (-k also matches the module name, test_ssd_cuda.py: the first two pick test_ssd_cuda by excluding the others)
  for k in "dtype0 and not all_gradients and not packed" "dtype1 and not all_gradients and not packed" \
           "all_gradients and 1000-64" "all_gradients and 513-128" "all_gradients and 2048-256" \
           "all_gradients and 1-256-4"; do
    i=$((i + 1))
    ( timeout "${T_TESTS:-75}" $PY -m pytest -q -p no:cacheprovider -o console_output_style=classic -rfE \
        tests/ops/test_ssd_cuda.py -k "$k" > "$RES/tests_$i.log" 2>&1; echo "rc=$? ($k)" >> "$RES/tests_$i.log" ) &
  done
  wait
  for f in "$RES"/tests_*.log; do grep -E "^(FAILED|ERROR)|passed|failed|skipped|rc=|Error" "$f" | tail -12; done
  for stage in ${STAGES:-}; do
    name=${stage%%:*}
    echo "=== stage: bench $name"
    timeout "${stage##*:}" $PY scripts/gpu_ssd.py "$name" "$RES/$name.json" 2>&1 | tail -40
    echo "rc=${PIPESTATUS[0]}"
  done
  echo "=== table"
  $PY scripts/gpu_ssd.py table "$RES"
  date -u
} 2>&1 | tee "$LOG"
tar czf "$OUT/gpu_ssd.tgz" -C "$RES" .
