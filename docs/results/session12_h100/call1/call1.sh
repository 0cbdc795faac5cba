#!/usr/bin/env bash
# Session 12 call 1: SSD beside mamba_ssm (both shapes), experts kernel times (coefficient A/B), #17 16K compiled tokens/s
set -u
export PYTHONPATH=$PWD/src:$PWD/.bench_deps TRITON_CACHE_DIR=$PWD/.triton_cache PYTHONUNBUFFERED=1
W=/tmp/s12/w1; mkdir -p $W; cp tmp_gpu/call1.sh $W/
nvidia-smi --query-gpu=name --format=csv,noheader > $W/device.txt
echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD || echo ' (+ uncommitted changes)')" >> $W/device.txt
python -c "import torch, triton; print(torch.__version__, triton.__version__)" >> $W/device.txt
timeout 140 python -c "
import json, torch
from wonderful_matrices.bench.kernels import mamba_ssm_rows
rows = mamba_ssm_rows(torch.device('cuda'))
json.dump(rows, open('$W/mamba_rows.json', 'w'), indent=1)
for r in rows: print(r)
" > $W/mamba.log 2>&1; echo "mamba rc $? at $SECONDS s"
timeout 150 python scripts/experts_kernel_times.py > $W/experts_kernel_times.log 2>&1; echo "ekt rc $? at $SECONDS s"
left=$((580 - SECONDS))
timeout $left python scripts/train_throughput.py --out $W/tp16k --compiled-only --seq-len 16384 \
  --variants llama-base cheems-base > $W/tp16k.log 2>&1; echo "tp16k rc $? at $SECONDS s"
tar -C /tmp/s12 -cJf $OUT/call1.tar.xz w1
grep -v Warn $W/mamba.log | cut -c1-400
cat $W/experts_kernel_times.log | cut -c1-200 | tail -25
grep "^{" $W/tp16k.log | cut -c1-250
