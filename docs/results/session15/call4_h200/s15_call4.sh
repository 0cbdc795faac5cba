#!/usr/bin/env bash
# Session 15 call 4 (short: the session's device time is nearly spent): the compiled-training CUDA test with the
# counting backend (all three cases), then the 2^20 experts kernels with the one-stage table_grad configurations.
set -u
LIMIT=${LIMIT:-240}
export PYTHONPATH=$PWD/src:$PWD/tests TRITON_CACHE_DIR=$PWD/.triton_cache PYTHONUNBUFFERED=1
W=/tmp/s15/c4; mkdir -p $W $TRITON_CACHE_DIR; cp tmp_gpu/s15_call4.sh $W/
nvidia-smi --query-gpu=name --format=csv,noheader > $W/device.txt
echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD || echo ' (+ uncommitted changes)')" >> $W/device.txt
python -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" .gpu_cache/triton_cache.tar.xz $TRITON_CACHE_DIR
OUT_SAVE=$OUT
pack() { tar -C /tmp/s15 -cJf $OUT_SAVE/c4.tar.xz c4; }
left() { local l=$((LIMIT - SECONDS - 10)); [ $l -lt $1 ] && echo $l || echo $1; }
step() { local want=$1 name=$2; shift 2; local l; l=$(left $want)
  if [ "$l" -lt 20 ]; then echo "$name: skipped ($l s left)"; return; fi
  timeout $l "$@" > $W/$name.log 2>&1; echo "$name rc $? at $SECONDS s"; pack; }
step 150 compiled_training python -m pytest -v -p no:cacheprovider -p no:logging --tb=short tests/train/test_compiled_training.py -k cuda
step 70 ekt_target python scripts/experts_kernel_times.py --shape target
grep -E "PASSED|FAILED|ERROR|passed|failed|^E " $W/compiled_training.log | cut -c1-200 | tail -12
grep -v "^\s*$" $W/ekt_target.log | cut -c1-200 | tail -18
