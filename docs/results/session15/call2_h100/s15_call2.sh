#!/usr/bin/env bash
# Session 15 call 2: the compiled CUDA tests after the cache fix (with tracebacks: no-window and llama were cut or
# failed in call 1), then the 2^20 experts kernels with the paired table gradient, CDMoE at 1024 and 2^20.
set -u
LIMIT=${LIMIT:-450}
export PYTHONPATH=$PWD/src:$PWD/tests TRITON_CACHE_DIR=$PWD/.triton_cache PYTHONUNBUFFERED=1
W=/tmp/s15/c2; mkdir -p $W $TRITON_CACHE_DIR; cp tmp_gpu/s15_call2.sh $W/
nvidia-smi --query-gpu=name --format=csv,noheader > $W/device.txt
echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD || echo ' (+ uncommitted changes)')" >> $W/device.txt
python -c "import torch, triton; print(torch.__version__, triton.__version__)" >> $W/device.txt
python -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" .gpu_cache/triton_cache.tar.xz $TRITON_CACHE_DIR
OUT_SAVE=$OUT
pack() { tar -C /tmp/s15 -cJf $OUT_SAVE/c2.tar.xz c2; }
left() { local l=$((LIMIT - SECONDS - 20)); [ $l -lt $1 ] && echo $l || echo $1; }
step() { local want=$1 name=$2; shift 2; local l; l=$(left $want)
  if [ "$l" -lt 20 ]; then echo "$name: skipped ($l s left)"; return; fi
  timeout $l "$@" > $W/$name.log 2>&1; echo "$name rc $? at $SECONDS s"; pack; }
step 70 ekt_target python scripts/experts_kernel_times.py --shape target
step 60 cdmoe_target python -m wonderful_matrices.bench.cdmoe_target --backends triton --counts 1024,1048576 --no-moe --out $W/cd
step 60 compiled_functions python -m pytest -v -p no:cacheprovider -p no:logging --tb=short tests/ops/test_compiled_functions.py -k cuda
step 260 compiled_training python -m pytest -v -p no:cacheprovider -p no:logging --tb=long tests/train/test_compiled_training.py -k "cuda and (no-window or llama)"
grep -v "^\s*$" $W/ekt_target.log | cut -c1-160 | tail -16
grep -i "ms\|wall" $W/cdmoe_target.log | cut -c1-200 | tail -8
grep -E "PASSED|FAILED|ERROR|passed|failed" $W/compiled_functions.log | cut -c1-150 | tail -30
grep -E "PASSED|FAILED|ERROR|passed|failed|^E " $W/compiled_training.log | cut -c1-250 | tail -40
