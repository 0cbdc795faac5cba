#!/usr/bin/env bash
# Session 20 (prepared in session 19): one call = the steps named in STEPS, each under its own time limit.
#   C=c1 STEPS="pc ssd dense t16" bash tmp_gpu/s20_call.sh     (carry tmp_gpu; a cold machine may cut t16: rerun it)
#   C=c2 STEPS="t16 p16" ...;  C=c3 STEPS="lms" ... (issue #15 lm-scale, back-to-back warm calls)
set -u
source scripts/gpu_steps.sh
cp tmp_gpu/s20_call.sh "$W/"
PT="python -m pytest -v -p no:cacheprovider --tb=short"
TP="python scripts/train_throughput.py --compiled-only"
for s in ${STEPS}; do case $s in
  pc) step 170 packed_compile python docs/results/session19/packed_compile.py cheems-base ;;
  ssd) step 200 ssd_cuda $PT tests/ops/test_ssd_cuda.py -k "silu or gradients or packed" ;;
  dense) step 100 dense_cuda $PT tests/ops/test_experts_cuda.py -k "dense or cdmoe" ;;
  t16) step 330 t16 $TP --out $W/t16 --seq-len 16384 --variants cheems-base llama-base cheems-base llama-base ;;
  t4) step 250 t4 $TP --out $W/t4 --seq-len 4096 --variants cheems-base llama-base cheems-base llama-base ;;
  p16) step 200 p16 python -c "from wonderful_matrices.bench import profile; profile.run('$W/p16', presets=('cheems-base','llama-base'), variants=('compiled',), seq_len=16384, batch=2, steps=3)"
       [ -f $W/p16/trace-cheems-base-compiled.json.gz ] && for m in cheems llama; do python docs/results/session11_h100/trace_kinds.py $W/p16/trace-$m-base-compiled.json.gz 3 > $W/p16/kinds-$m.txt 2>&1; done; pack ;;
  lms) L=$((LIMIT - SECONDS - 10)); mkdir -p $OUT/lms
       OUT=$OUT/lms CALL_S=$L bash tmp_gpu/s17_lmscale.sh > /dev/null 2>&1; echo "lm-scale for $L s"; tail -c 2500 $OUT/lms/summary.log ;;
esac; done
grep -hE "ok|FAILED" $W/packed_compile.log 2>/dev/null
grep -hE " passed| failed|^FAILED" $W/*_cuda.log 2>/dev/null | cut -c1-200 | tail -8
for d in $W/t16 $W/t4; do [ -f $d/results.md ] && tail -6 $d/results.md; done
