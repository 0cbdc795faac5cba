#!/usr/bin/env bash
# Session 17 call 1: compiled packed training on CUDA (no-window DMA and llama: the padded_document_ids operator),
# then cheems-base vs llama-base compiled training tokens/s and peak memory at 16K.
set -u
LIMIT=${LIMIT:-590}
export PYTHONPATH=$PWD/src:$PWD/tests TRITON_CACHE_DIR=$PWD/.triton_cache PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR=$PWD/.inductor_cache
W=/tmp/s17/c1; mkdir -p $W $TRITON_CACHE_DIR; cp tmp_gpu/s17_call1.sh $W/
nvidia-smi --query-gpu=name --format=csv,noheader > $W/device.txt
echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD || echo ' (+ uncommitted changes)')" >> $W/device.txt
python -c "import torch, triton; print(torch.__version__, triton.__version__)" >> $W/device.txt
OUT_SAVE=$OUT
pack() { tar -C /tmp/s17 -cJf $OUT_SAVE/c1.tar.xz c1; }
left() { local l=$((LIMIT - SECONDS - 25)); [ $l -lt $1 ] && echo $l || echo $1; }
step() { local want=$1 name=$2; shift 2; local l; l=$(left $want)
  if [ "$l" -lt 20 ]; then echo "$name: skipped ($l s left)"; return; fi
  timeout $l "$@" > $W/$name.log 2>&1; echo "$name rc $? at $SECONDS s"; pack; }
step 380 tput16k python scripts/train_throughput.py --out $W/tput16k --compiled-only --seq-len 16384 --variants cheems-base llama-base
step 170 compiled_train python -m pytest -v -p no:cacheprovider --tb=short tests/train/test_compiled_training.py -k "cuda and (no-window or llama)"
grep -E "PASSED|FAILED|passed|failed|^E " $W/compiled_train.log | cut -c1-200 | tail -8
cat $W/tput16k/results.md 2>/dev/null | tail -6
