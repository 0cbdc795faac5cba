#!/usr/bin/env bash
# Session 18 call 1: #17 checks (the dense mixture's CUDA parity after the GEMM-rounded row sums; SSD's with cb
# recomputed in the backward; the norms' out_dtype; the LM-head loss alone;
# compiled 16K tokens/s of cheems-base and llama-base on this code, and cheems-base on 3f70c07, the code
# before the loss operator, in separate processes back to back), then issue #15's lm-scale for the rest of the call.
set -u
LIMIT=${LIMIT:-590}
export PYTHONPATH=$PWD/src:$PWD/tests TRITON_CACHE_DIR=$PWD/.triton_cache PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR=$PWD/.inductor_cache
W=/tmp/s18/c1; mkdir -p $W $TRITON_CACHE_DIR; cp tmp_gpu/s18_call1.sh $W/
nvidia-smi --query-gpu=name --format=csv,noheader > $W/device.txt
echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD || echo ' (+ uncommitted changes)')" >> $W/device.txt
python -c "import torch, triton; print(torch.__version__, triton.__version__)" >> $W/device.txt
OUT_SAVE=$OUT
pack() { tar -C /tmp/s18 -cJf $OUT_SAVE/c1.tar.xz c1; }
left() { local l=$((LIMIT - SECONDS - 15)); [ $l -lt $1 ] && echo $l || echo $1; }
step() { local want=$1 name=$2; shift 2; local l; l=$(left $want)
  if [ "$l" -lt 20 ]; then echo "$name: skipped ($l s left)"; return; fi
  timeout $l "$@" > $W/$name.log 2>&1; echo "$name rc $? at $SECONDS s" | tee -a $W/steps.txt; pack; }
step 100 dense_cuda python -m pytest -v -p no:cacheprovider --tb=short tests/ops/test_experts_cuda.py -k dense
step 60 norm_cuda python -m pytest -v -p no:cacheprovider --tb=short tests/ops/test_norm_loss_cuda.py
step 150 ssd_cuda python -m pytest -v -p no:cacheprovider --tb=short tests/ops/test_ssd_cuda.py -k "gradients or packed"
step 200 tput16k python scripts/train_throughput.py --out $W/tput16k --compiled-only --seq-len 16384 --variants cheems-base llama-base
step 110 tput16k_old env PYTHONPATH=$PWD/tmp_gpu/old/src:$PWD/tests python scripts/train_throughput.py --out $W/tput16k_old --compiled-only --seq-len 16384 --variants cheems-base
step 80 loss_rows python -c "import torch; from wonderful_matrices.bench import kernels; [print(r) for r in kernels.lm_loss_rows(False, torch.device('cuda'))]"
grep -hE "passed|failed|^E " $W/dense_cuda.log $W/norm_cuda.log $W/ssd_cuda.log | cut -c1-200 | tail -8
cut -c1-300 $W/loss_rows.log | tail -12
tail -3 $W/tput16k/results.md $W/tput16k_old/results.md 2>/dev/null
L=$((LIMIT - SECONDS - 10))
if [ $L -gt 90 ]; then
  mkdir -p $OUT/lms; OUT=$OUT/lms CALL_S=$L bash tmp_gpu/s17_lmscale.sh > /dev/null 2>&1
  echo "lm-scale for $L s"; tail -c 1500 $OUT/lms/summary.log
fi
