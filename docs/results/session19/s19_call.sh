#!/usr/bin/env bash
# Session 19: one call = the steps named in STEPS (space separated), each with its own time limit.
set -u
LIMIT=${LIMIT:-585}; C=${C:-c1}
export PYTHONPATH=$PWD/src:$PWD/tests TRITON_CACHE_DIR=$PWD/.triton_cache PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR=$PWD/.inductor_cache
W=/tmp/s19/$C; mkdir -p $W $TRITON_CACHE_DIR; cp tmp_gpu/s19_call.sh $W/
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader > $W/device.txt
echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD || echo ' (+ uncommitted changes)')" >> $W/device.txt
python -c "import torch, triton; print(torch.__version__, triton.__version__)" >> $W/device.txt
OUT_SAVE=$OUT
pack() { tar -C /tmp/s19 -cJf $OUT_SAVE/$C.tar.xz $C; }
left() { local l=$((LIMIT - SECONDS - 15)); [ $l -lt $1 ] && echo $l || echo $1; }
step() { local want=$1 name=$2; shift 2; local l; l=$(left $want)
  if [ "$l" -lt 20 ]; then echo "$name: skipped ($l s left)"; return; fi
  timeout $l "$@" > $W/$name.log 2>&1; echo "$name rc $? at $SECONDS s" | tee -a $W/steps.txt; pack; }
PT="python -m pytest -v -p no:cacheprovider --tb=short"
TP="python scripts/train_throughput.py --compiled-only"
for s in ${STEPS}; do case $s in
  ssd) step 200 ssd_cuda $PT tests/ops/test_ssd_cuda.py -k "silu or gradients" ;;
  norm) step 100 norm_cuda $PT tests/ops/test_norm_loss_cuda.py tests/ops/test_gated_linear_cuda.py ;;
  t16a) step 330 t16a env TRITON_PRINT_AUTOTUNING=1 TRITON_CACHE_AUTOTUNING=1 $TP --out $W/t16a --seq-len 16384 --variants cheems-base llama-base cheems-base llama-base ;;
  t16b) step 330 t16b env TRITON_PRINT_AUTOTUNING=1 TRITON_CACHE_AUTOTUNING=1 $TP --out $W/t16b --seq-len 16384 --variants cheems-base llama-base cheems-base llama-base ;;
  t4) step 250 t4 env TRITON_PRINT_AUTOTUNING=1 TRITON_CACHE_AUTOTUNING=1 $TP --out $W/t4 --seq-len 4096 --variants cheems-base llama-base cheems-base llama-base ;;
  p16) step 200 p16 python -c "from wonderful_matrices.bench import profile; profile.run('$W/p16', presets=('cheems-base','llama-base'), variants=('compiled',), seq_len=16384, batch=2, steps=3)"
       [ -f $W/p16/trace-cheems-base-compiled.json.gz ] && for m in cheems llama; do python docs/results/session11_h100/trace_kinds.py $W/p16/trace-$m-base-compiled.json.gz 3 > $W/p16/kinds-$m.txt 2>&1; done; pack ;;
  lms) L=$((LIMIT - SECONDS - 10)); mkdir -p $OUT/lms
       OUT=$OUT/lms CALL_S=$L bash tmp_gpu/s17_lmscale.sh > /dev/null 2>&1; echo "lm-scale for $L s"; tail -c 2500 $OUT/lms/summary.log ;;
esac; done
grep -hE " passed| failed|^E |^FAILED" $W/*_cuda.log 2>/dev/null | cut -c1-200 | tail -12
for d in $W/t16a $W/t16b $W/t4; do [ -f $d/results.md ] && cat $d/results.md; done
