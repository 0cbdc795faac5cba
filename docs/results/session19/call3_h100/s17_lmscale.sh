#!/usr/bin/env bash
# Session 17: issue #15 item 1 (claim 4 at scale) as resumable 10-minute calls. A fresh machine gets the state of the
# earlier calls (results, tokenizer) from tmp_gpu/lm-scale-state; the warm one still has runs/lm-scale.
set -u
export PYTHONPATH=$PWD/src:$PWD/tests TRITON_CACHE_DIR=$PWD/.triton_cache TORCHINDUCTOR_CACHE_DIR=$PWD/.inductor_cache
mkdir -p runs/lm-scale
[ -d tmp_gpu/lm-scale-state ] && cp -rn tmp_gpu/lm-scale-state/. runs/lm-scale/
nvidia-smi --query-gpu=name --format=csv,noheader > $OUT/device.txt
echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD || echo ' (+ uncommitted changes)')" >> $OUT/device.txt
cp tmp_gpu/s17_lmscale.sh $OUT/
COMPILED_TRAINING=${COMPILED_TRAINING:-1} CALL_S=${CALL_S:-575} OUT=$OUT bash scripts/gpu_claims.sh lm-scale > $OUT/call.log 2>&1
tail -c 4000 $OUT/summary.log
