#!/usr/bin/env bash
# Issue #15 item 1 (claim 4 at scale) as resumable 10-minute calls. A fresh machine gets the earlier calls' state
# (results, tokenizer) from tmp_gpu/lm-scale-state.tgz (STATE=); the warm one still has runs/lm-scale.
set -u
export PYTHONPATH=$PWD/src:$PWD/tests TRITON_CACHE_DIR=$PWD/.triton_cache TORCHINDUCTOR_CACHE_DIR=$PWD/.inductor_cache
nvidia-smi --query-gpu=name --format=csv,noheader > $OUT/device.txt
echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD || echo ' (+ uncommitted changes)')" >> $OUT/device.txt
cp tmp_gpu/s17_lmscale.sh $OUT/
ST=""; [ -f tmp_gpu/lm-scale-state.tgz ] && [ ! -d runs/lm-scale ] && ST=$PWD/tmp_gpu/lm-scale-state.tgz
STATE=$ST COMPILED_TRAINING=${COMPILED_TRAINING:-1} CALL_S=${CALL_S:-575} OUT=$OUT bash scripts/gpu_claims.sh lm-scale > $OUT/call.log 2>&1
tail -c 4000 $OUT/summary.log
