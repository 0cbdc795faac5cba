#!/usr/bin/env bash
# session 8 call 1: #14 packed timings (ssd, dma) + cheems-base on python-source, then #18 decode at 4K
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=$PWD/.triton_cache
git rev-parse HEAD > $OUT/commit.txt 2>/dev/null
STAGES="ssd dma train" TRAIN_STEPS=200 T_SSD=140 T_DMA=140 T_TRAIN=240 OUT=$OUT bash scripts/gpu_packing.sh > $OUT/packing_stdout.log 2>&1
tail -5 $OUT/packing_stdout.log
left=$((570 - SECONDS))
echo "left for generate: $left s"
if [ $left -gt 60 ]; then
timeout $((left - 10)) python3 - "$OUT/generate" > "$OUT/generate.log" 2>&1 <<'PY'
import sys
from wonderful_matrices.bench import generate
generate.run(sys.argv[1], presets="cheems-base,llama-base", contexts=(4096,), batches=(), prefill_lengths=(),
             reps=50, anchor=False)
PY
grep -E "decode|rows|Error" "$OUT/generate.log" | tail
fi
