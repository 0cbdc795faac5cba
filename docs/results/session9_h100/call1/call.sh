#!/usr/bin/env bash
# session 9 call 1: flex diag (#14), packed SSD/DMA timings (#14), eager/graphed decode + HF anchor (#18), compiled tokens/s (#17)
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=$PWD/.triton_cache
nvidia-smi --query-gpu=name --format=csv,noheader
echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD || echo ' (+ uncommitted changes)')"
git rev-parse HEAD > $OUT/commit.txt
timeout 140 python3 scripts/gpu_flex_diag.py --out $OUT/flex_diag.json --budget 100 > $OUT/flex_diag.log 2>&1
echo "flex diag rc $? at $SECONDS s"; grep -vE "Warning|warn" $OUT/flex_diag.log | tail -40 | cut -c1-200
STAGES="ssd dma" T_SSD=130 T_DMA=130 OUT=$OUT bash scripts/gpu_packing.sh > $OUT/packing_stdout.log 2>&1
echo "packing at $SECONDS s"; grep -E "packed|overhead|rc=" $OUT/packing_stdout.log | tail -14 | cut -c1-220
timeout 200 python3 - "$OUT/generate" > "$OUT/generate.log" 2>&1 <<'PY'
import sys
from wonderful_matrices.bench import generate
generate.run(sys.argv[1], presets="cheems-base,llama-base", contexts=(4096, 131072, 1048576),
             batches=(1, 16, 64, 256), prefill_lengths=(4096, 131072), reps=20, anchor=True)
PY
echo "generate rc $? at $SECONDS s"; grep -E "decode|prefill|hf-llama|rows|Error" "$OUT/generate.log" | tail -20 | cut -c1-250
left=$((585 - SECONDS))
[ $left -gt 60 ] && timeout $left python3 scripts/train_throughput.py --out $OUT/tp_compiled --compiled \
  --variants llama-base cheems-base > $OUT/tp_compiled.log 2>&1
echo "compiled throughput rc $? at $SECONDS s"; grep "^{" $OUT/tp_compiled.log | cut -c1-200; grep -iE "error" $OUT/tp_compiled.log | head -3
