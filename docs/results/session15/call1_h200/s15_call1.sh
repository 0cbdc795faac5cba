#!/usr/bin/env bash
# Session 15 call 1: the cast fix on CUDA (compiled Functions + compiled training against eager), the 2^20 experts
# kernels with table_grad's TILE_E configs, then 16K compiled training tokens/s with the expert gradients restored.
set -u
LIMIT=${LIMIT:-590}
export PYTHONPATH=$PWD/src:$PWD/tests TRITON_CACHE_DIR=$PWD/.triton_cache PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR=$PWD/.inductor_cache
W=/tmp/s15/c1; mkdir -p $W $TRITON_CACHE_DIR; cp tmp_gpu/s15_call1.sh $W/
nvidia-smi --query-gpu=name --format=csv,noheader > $W/device.txt
echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD || echo ' (+ uncommitted changes)')" >> $W/device.txt
python -c "import torch, triton; print(torch.__version__, triton.__version__)" >> $W/device.txt
python -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" .gpu_cache/triton_cache.tar.xz $TRITON_CACHE_DIR
OUT_SAVE=$OUT
pack() { tar -C /tmp/s15 -cJf $OUT_SAVE/c1.tar.xz c1; }
left() { local l=$((LIMIT - SECONDS - 25)); [ $l -lt $1 ] && echo $l || echo $1; }
step() { local want=$1 name=$2; shift 2; local l; l=$(left $want)
  if [ "$l" -lt 20 ]; then echo "$name: skipped ($l s left)"; return; fi
  timeout $l "$@" > $W/$name.log 2>&1; echo "$name rc $? at $SECONDS s"; pack; }
step 160 compiled_cuda python -m pytest -v -p no:cacheprovider tests/ops/test_compiled_functions.py tests/train/test_compiled_training.py -k cuda
step 70 ekt_target python scripts/experts_kernel_times.py --shape target
step 70 cdmoe_target python -m wonderful_matrices.bench.cdmoe_target --backends triton --counts 1024,1048576 --no-moe --out $W/cd
step 400 tp16k python scripts/train_throughput.py --out $W/tp16k --compiled-only --seq-len 16384 --variants cheems-base llama-base
du -sh $TRITON_CACHE_DIR $TORCHINDUCTOR_CACHE_DIR
tar -C $PWD -cJf /tmp/s15/caches.tar.xz .triton_cache .inductor_cache; ls -la /tmp/s15/caches.tar.xz
[ $(stat -c %s /tmp/s15/caches.tar.xz) -lt 45000000 ] && cp /tmp/s15/caches.tar.xz $OUT_SAVE/
grep -E "PASSED|FAILED|ERROR|passed|failed" $W/compiled_cuda.log | cut -c1-150 | tail -40
grep -v "^\s*$" $W/ekt_target.log | cut -c1-160 | tail -16
grep -i "ms\|wall" $W/cdmoe_target.log | cut -c1-200 | tail -8
grep "^{" $W/tp16k.log | cut -c1-300; tail -3 $W/tp16k.log
