#!/usr/bin/env bash
set -uo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=$PWD/.triton_cache
END=585
left() { local l=$((END - SECONDS)); [ $l -lt $1 ] && echo $l || echo $1; }
echo "commit $(git rev-parse --short HEAD 2>/dev/null) $(nvidia-smi --query-gpu=name --format=csv,noheader)"
timeout $(left 60) python3 tmp_gpu/ssd64_diag.py > $OUT/ssd64_diag.log 2>&1; echo "diag rc $? at $SECONDS s"; cat $OUT/ssd64_diag.log | cut -c1-220
OUT=$OUT/dense bash scripts/gpu_dense.sh 2>&1 | tail -25; echo "dense at $SECONDS s"
mkdir -p $OUT/select
timeout $(left 70) python3 -m wonderful_matrices.bench.dma --out $OUT/select --selection-only > $OUT/select_bench.log 2>&1; echo "select rc $? at $SECONDS s"
grep -E "selection" $OUT/select/results.md | head -20
timeout $(left 100) python3 - "$OUT/generate" > "$OUT/generate.log" 2>&1 <<'PY'
import sys
from wonderful_matrices.bench import generate
generate.run(sys.argv[1], presets="cheems-base,llama-base", contexts=(4096,), batches=(), prefill_lengths=(),
             reps=50, anchor=False)
PY
echo "generate rc $? at $SECONDS s"; grep -E "decode|rows" $OUT/generate.log | cut -c1-300
