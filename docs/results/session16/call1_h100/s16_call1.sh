#!/usr/bin/env bash
# Session 16 call 1: the no-window Triton backward on CUDA (parity tests, then the 16K DMA bench beside Flex and
# SDPA), the no-window compiled-training case (padded_bias_rows under Inductor), the CDMoE layer at 2^20 experts.
set -u
LIMIT=${LIMIT:-590}
export PYTHONPATH=$PWD/src:$PWD/tests TRITON_CACHE_DIR=$PWD/.triton_cache PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR=$PWD/.inductor_cache
W=/tmp/s16/c1; mkdir -p $W $TRITON_CACHE_DIR; cp tmp_gpu/s16_call1.sh $W/
nvidia-smi --query-gpu=name --format=csv,noheader > $W/device.txt
echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD || echo ' (+ uncommitted changes)')" >> $W/device.txt
python -c "import torch, triton; print(torch.__version__, triton.__version__)" >> $W/device.txt
OUT_SAVE=$OUT
pack() { tar -C /tmp/s16 -cJf $OUT_SAVE/c1.tar.xz c1; }
left() { local l=$((LIMIT - SECONDS - 25)); [ $l -lt $1 ] && echo $l || echo $1; }
step() { local want=$1 name=$2; shift 2; local l; l=$(left $want)
  if [ "$l" -lt 20 ]; then echo "$name: skipped ($l s left)"; return; fi
  timeout $l "$@" > $W/$name.log 2>&1; echo "$name rc $? at $SECONDS s"; pack; }
step 200 dma_nowindow python -m pytest -v -p no:cacheprovider --tb=short -n 8 --dist loadgroup tests/ops/test_dma_cuda.py -k "no_window_flex or packed_cuda"
step 100 dma16k python -m wonderful_matrices.bench.dma --out $W/dma16k --lengths 16384 --batches --packed-length 0
step 130 compiled_nowindow python -m pytest -v -p no:cacheprovider --tb=short tests/train/test_compiled_training.py -k "cuda and no-window"
step 80 cdmoe_target python -m wonderful_matrices.bench.cdmoe_target --backends triton --counts 1024,1048576 --no-moe --out $W/cd
grep -E "passed|failed|^FAILED|^ERROR" $W/dma_nowindow.log | cut -c1-200 | tail -15
grep -E "no window|flex|sdpa" $W/dma16k.log | cut -c1-300 | tail -8
grep -E "PASSED|FAILED|passed|failed|^E " $W/compiled_nowindow.log | cut -c1-200 | tail -8
grep -i "ms\|wall" $W/cdmoe_target.log | cut -c1-200 | tail -6
