#!/usr/bin/env bash
# Session 14 call 3: CDMoE pieces compiled against eager on CUDA (which part loses the gradients), then the models suite.
set -u
export PYTHONPATH=$PWD/src:$PWD/tests TRITON_CACHE_DIR=$PWD/.triton_cache PYTHONUNBUFFERED=1
W=/tmp/s14/c3; mkdir -p $W; cp tmp_gpu/s14_call3.sh tmp_gpu/diag_cdmoe.py $W/
echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD || echo ' (+ uncommitted changes)')" > $W/device.txt
timeout 150 python tmp_gpu/diag_cdmoe.py > $W/diag_cdmoe.log 2>&1; echo "diag rc $? at $SECONDS s"
tar -C /tmp/s14 -cJf $OUT/c3.tar.xz c3
grep -v "Warn\|warn\|triton_usable\|return triton\|^\s*\^\|This call\|File \"\|^\s*$" $W/diag_cdmoe.log | cut -c1-330
