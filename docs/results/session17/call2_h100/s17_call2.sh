#!/usr/bin/env bash
# Session 17 call 2: cheems-base vs llama-base compiled training tokens/s at 4K, then a compiled 4K profile of both.
set -u
LIMIT=${LIMIT:-590}
export PYTHONPATH=$PWD/src:$PWD/tests TRITON_CACHE_DIR=$PWD/.triton_cache PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR=$PWD/.inductor_cache
W=/tmp/s17/c2; mkdir -p $W $TRITON_CACHE_DIR; cp tmp_gpu/s17_call2.sh $W/
nvidia-smi --query-gpu=name --format=csv,noheader > $W/device.txt
echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD || echo ' (+ uncommitted changes)')" >> $W/device.txt
python -c "import torch, triton; print(torch.__version__, triton.__version__)" >> $W/device.txt
OUT_SAVE=$OUT
pack() { tar -C /tmp/s17 -cJf $OUT_SAVE/c2.tar.xz c2; }
left() { local l=$((LIMIT - SECONDS - 25)); [ $l -lt $1 ] && echo $l || echo $1; }
step() { local want=$1 name=$2; shift 2; local l; l=$(left $want)
  if [ "$l" -lt 20 ]; then echo "$name: skipped ($l s left)"; return; fi
  timeout $l "$@" > $W/$name.log 2>&1; echo "$name rc $? at $SECONDS s"; pack; }
step 300 tput4k python scripts/train_throughput.py --out $W/tput4k --compiled-only --seq-len 4096 --variants cheems-base llama-base
step 240 prof4k python -c "from wonderful_matrices.bench import profile; profile.run('$W/prof4k', presets=('cheems-base','llama-base'), variants=('compiled',), seq_len=4096, batch=8, steps=3)"
cat $W/tput4k/results.md 2>/dev/null | tail -6
head -c 2500 $W/prof4k/results.md 2>/dev/null
