#!/usr/bin/env bash
# Run on a GPU machine from the repository root: the CUDA parity tests, then the op benchmarks at full scale.
# Results go to ${OUT:-out}/results.tgz (one folder per benchmark) and ${OUT:-out}/*.log.
set -uo pipefail
OUT=${OUT:-out}
RES=$(mktemp -d)
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
python3 -m pytest -q -p no:cacheprovider tests/ops/test_ops_cuda.py 2>&1 | tail -15 | tee "$OUT/cuda_tests.log"
for name in ${BENCHES:-ssd dma experts}; do
  echo "=== bench $name"
  timeout "${BENCH_TIMEOUT:-240}" python3 -m wonderful_matrices.bench."$name" --out "$RES/$name" 2>&1 | tail -40
done
tar czf "$OUT/results.tgz" -C "$RES" .
