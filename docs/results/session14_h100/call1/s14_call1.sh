#!/usr/bin/env bash
# Session 14 call 1 (#17): the experts CUDA suite (complete log), top-k insertion vs bitonic, experts kernel times at
# cheems-base's and the 2^20 shape, CDMoE at 1024 and 2^20, the compiled-training CUDA test, 16K compiled tokens/s.
set -u
LIMIT=${LIMIT:-585}
export PYTHONPATH=$PWD/src TRITON_CACHE_DIR=$PWD/.triton_cache PYTHONUNBUFFERED=1
W=/tmp/s14/c1; mkdir -p $W $TRITON_CACHE_DIR; cp tmp_gpu/s14_call1.sh $W/
nvidia-smi --query-gpu=name --format=csv,noheader > $W/device.txt
echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD || echo ' (+ uncommitted changes)')" >> $W/device.txt
python -c "import torch, triton; print(torch.__version__, triton.__version__)" >> $W/device.txt
OUT_SAVE=$OUT
pack() { tar -C /tmp/s14 -cJf $OUT_SAVE/c1.tar.xz c1; }
left() { local l=$((LIMIT - SECONDS - 15)); [ $l -lt $1 ] && echo $l || echo $1; }
step() { local want=$1 name=$2; shift 2; local l; l=$(left $want)
  if [ "$l" -lt 20 ]; then echo "$name: skipped ($l s left)"; return; fi
  timeout $l "$@" > $W/$name.log 2>&1; echo "$name rc $? at $SECONDS s"; pack; }
OUT=$W AREA=experts BUDGET=200 TIMEOUT=190 bash scripts/gpu_check.sh > $W/gpu_check_experts.out 2>&1; echo "experts rc $? at $SECONDS s"; pack
step 60 topk_bench python scripts/topk_bench.py
step 45 ekt python scripts/experts_kernel_times.py
step 60 ekt_target python scripts/experts_kernel_times.py --shape target
step 60 cdmoe_target python -m wonderful_matrices.bench.cdmoe_target --backends triton --counts 1024,1048576 --no-moe --out $W/cd
step 120 compiled_training_cuda python -m pytest -q -x tests/train/test_compiled_training.py -k cuda -p no:cacheprovider
step 200 tp16k python scripts/train_throughput.py --out $W/tp16k --compiled-only --seq-len 16384 --variants llama-base cheems-base
tail -4 $W/gpu_check_experts.out
tail -12 $W/topk_bench.log
grep -v "^\s*$" $W/ekt.log | cut -c1-160 | tail -14
grep -v "^\s*$" $W/ekt_target.log | cut -c1-160 | tail -16
grep -i "ms\|wall" $W/cdmoe_target.log | cut -c1-200 | tail -8
tail -3 $W/compiled_training_cuda.log
grep "^{" $W/tp16k.log | cut -c1-300; tail -3 $W/tp16k.log
