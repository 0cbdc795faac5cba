#!/usr/bin/env bash
# session 8 call 4 (#18): long contexts, batched decoding at 64K, prefill
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=$PWD/.triton_cache
for p in cheems-base llama-base; do
timeout 220 python3 - "$OUT/generate_$p" $p > "$OUT/generate_$p.log" 2>&1 <<'PY'
import sys
from wonderful_matrices.bench import generate
generate.run(sys.argv[1], presets=sys.argv[2], contexts=(131072, 1048576), batches=(1, 16, 64, 256),
             prefill_lengths=(4096, 131072), reps=20, anchor=False)
PY
echo "$p rc $? at $SECONDS s"; grep -E "decode|prefill|batch|Error" "$OUT/generate_$p.log" | tail -12
done
