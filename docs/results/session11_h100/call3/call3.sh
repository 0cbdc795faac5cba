#!/usr/bin/env bash
# Session 11 call 3: #13 where the windowed backward goes (selection block, dk/dv configs, atomics); #17 16K compiled tokens/s
set -u
export PYTHONPATH=$PWD/src TRITON_CACHE_DIR=$PWD/.triton_cache PYTHONUNBUFFERED=1
W=/tmp/s11/w3; mkdir -p $W; cp tmp_gpu/call3.sh tmp_gpu/dkv_exp.py $W/
nvidia-smi --query-gpu=name --format=csv,noheader > $W/device.txt
echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD || echo ' (+ uncommitted changes)')" >> $W/device.txt
timeout 230 python tmp_gpu/dkv_exp.py > $W/dkv_exp.log 2>&1; echo "dkv rc $? at $SECONDS s"
left=$((570 - SECONDS))
timeout $left python scripts/train_throughput.py --out $W/tp16k --compiled-only --seq-len 16384 \
  --variants llama-base cheems-base > $W/tp16k.log 2>&1; echo "tp16k rc $? at $SECONDS s"
tar -C /tmp/s11 -cJf $OUT/call3.tar.xz w3
grep -v "^\s*$" $W/dkv_exp.log | grep -v Warn | cut -c1-250 | tail -45; grep "^{" $W/tp16k.log | cut -c1-200
