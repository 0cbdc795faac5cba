#!/usr/bin/env bash
# session 8 call 2 (#17): compiled training tokens/s with each expert-mixture backend, then the compiled profile
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=$PWD/.triton_cache
nvidia-smi --query-gpu=name --format=csv,noheader
echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD || echo ' (+ uncommitted changes)')"
timeout 60 python3 scripts/gpu_ssd.py packed $OUT/ssd_packed_kernels.json > $OUT/ssd_packed_kernels.log 2>&1
cat $OUT/ssd_packed_kernels.log | tail -20
timeout 280 python3 scripts/train_throughput.py --out $OUT/tp_compiled --compiled \
  --variants llama-base cheems-base cheems-base:cdmoe_backend=dense > $OUT/tp_compiled.log 2>&1
echo "compiled throughput rc $? at $SECONDS s"; cut -c1-220 $OUT/tp_compiled/results.md 2>/dev/null; grep -iE "error" $OUT/tp_compiled.log | head -3
left=$((580 - SECONDS))
timeout $left python3 -m wonderful_matrices.bench profile --presets cheems-base,llama-base --variants compiled \
  --out $OUT/profile > $OUT/profile.log 2>&1
echo "profile rc $? at $SECONDS s"; grep -E "compiled:" $OUT/profile.log | cut -c1-300
rm -f $OUT/profile/trace-*.json.gz.tmp
ls -la $OUT/profile | head
