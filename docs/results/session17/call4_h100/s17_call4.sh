#!/usr/bin/env bash
# Session 17 call 4: the chunked loss as one opaque operator with its Triton row kernel — its CUDA test, then
# cheems-base vs llama-base compiled training tokens/s and peak memory at 16K (calls 1's setting).
set -u
LIMIT=${LIMIT:-250}
export PYTHONPATH=$PWD/src:$PWD/tests TRITON_CACHE_DIR=$PWD/.triton_cache PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR=$PWD/.inductor_cache
W=/tmp/s17/c4; mkdir -p $W $TRITON_CACHE_DIR; cp tmp_gpu/s17_call4.sh $W/
nvidia-smi --query-gpu=name --format=csv,noheader > $W/device.txt
echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD || echo ' (+ uncommitted changes)')" >> $W/device.txt
python -c "import torch, triton; print(torch.__version__, triton.__version__)" >> $W/device.txt
OUT_SAVE=$OUT
pack() { tar -C /tmp/s17 -cJf $OUT_SAVE/c4.tar.xz c4; }
left() { local l=$((LIMIT - SECONDS - 15)); [ $l -lt $1 ] && echo $l || echo $1; }
step() { local want=$1 name=$2; shift 2; local l; l=$(left $want)
  if [ "$l" -lt 20 ]; then echo "$name: skipped ($l s left)"; return; fi
  timeout $l "$@" > $W/$name.log 2>&1; echo "$name rc $? at $SECONDS s"; pack; }
step 60 loss_cuda python -m pytest -v -p no:cacheprovider --tb=short tests/ops/test_norm_loss_cuda.py -k "linear_cross_entropy"
step 200 tput16k python scripts/train_throughput.py --out $W/tput16k --compiled-only --seq-len 16384 --variants cheems-base
grep -E "PASSED|FAILED|passed|failed|^E " $W/loss_cuda.log | cut -c1-200 | tail -6
cat $W/tput16k/results.md 2>/dev/null | tail -4
