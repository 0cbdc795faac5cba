#!/usr/bin/env bash
set -u
export PYTHONPATH=$PWD/src:$PWD/tests TRITON_CACHE_DIR=$PWD/.triton_cache TORCHINDUCTOR_CACHE_DIR=$PWD/.inductor_cache PYTHONUNBUFFERED=1
mkdir -p $OUT/c3; cp tmp_gpu/s17_call3.sh tmp_gpu/memsnap.py $OUT/c3/
echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD || echo ' (+ uncommitted changes)')" > $OUT/c3/device.txt
timeout 200 python tmp_gpu/memsnap.py cheems-base $OUT/c3 > $OUT/c3/memsnap_cheems.log 2>&1; echo "memsnap rc $? at $SECONDS s"
grep -v Warn $OUT/c3/memsnap_cheems.log | tail -45 | cut -c1-260
L=$((560 - SECONDS)); [ $L -gt 150 ] && timeout $((L - 10)) python tmp_gpu/memsnap.py llama-base $OUT/c3 > $OUT/c3/memsnap_llama.log 2>&1
grep -v Warn $OUT/c3/memsnap_llama.log | tail -25 | cut -c1-260
