#!/usr/bin/env bash
# Session 21 (prepared in session 20): one call = the steps named in STEPS, each under its own time limit.
# First: mkdir -p tmp_gpu && cp docs/results/session20/{s21_call.sh,s17_lmscale.sh} tmp_gpu/ (tmp_gpu/ is ignored:
# echo /tmp_gpu/ >> .git/info/exclude), and pass carry: ["tmp_gpu"] with every call.
#   C=c1 STEPS="jt t16 p16" bash tmp_gpu/s21_call.sh       (carry tmp_gpu; a cold machine may cut t16/p16: rerun them)
#   C=c2 STEPS="g16" ...  (the same pairs with each step replayed from a CUDA graph: is cheems' step host-bound?)
#   C=c3 STEPS="half1" ...;  C=c4 STEPS="half2" ...           (the complete CUDA suite of the measured code)
#   C=c5 STEPS="lms" ...  (issue #15 lm-scale, back-to-back warm calls)
set -u
source scripts/gpu_steps.sh
cp tmp_gpu/s21_call.sh "$W/"
PT="python -m pytest -v -p no:cacheprovider --tb=long"
TP="python scripts/train_throughput.py --compiled-only"
for s in ${STEPS}; do case $s in
  jt) step 150 jt_cuda $PT tests/ops/test_subkey_marginals.py tests/models/test_models_cuda.py -k "marginals or fused_training_step" ;;
  t16) step 330 t16 $TP --out $W/t16 --seq-len 16384 --variants cheems-base llama-base cheems-base llama-base ;;
  g16) step 360 g16 $TP --graphed --out $W/g16 --seq-len 16384 --variants cheems-base llama-base cheems-base llama-base ;;
  p16) step 200 p16 python -c "from wonderful_matrices.bench import profile; profile.run('$W/p16', presets=('cheems-base','llama-base'), variants=('compiled',), seq_len=16384, batch=2, steps=3)"
       [ -f $W/p16/trace-cheems-base-compiled.json.gz ] && for m in cheems llama; do python docs/results/session11_h100/trace_kinds.py $W/p16/trace-$m-base-compiled.json.gz 3 > $W/p16/kinds-$m.txt 2>&1; done; pack ;;
  half1|half2) L=$((LIMIT - SECONDS - 20)); AREA=$s BUDGET=$L TIMEOUT=$L OUT=$W bash scripts/gpu_check.sh > $W/gpu_check_$s.txt 2>&1; pack ;;
  lms) L=$((LIMIT - SECONDS - 10)); mkdir -p $OUT/lms
       OUT=$OUT/lms CALL_S=$L bash tmp_gpu/s17_lmscale.sh > /dev/null 2>&1; echo "lm-scale for $L s"; tail -c 2500 $OUT/lms/summary.log ;;
esac; done
grep -hE " passed| failed|^FAILED" $W/*_cuda.log $W/gpu_check_*.txt 2>/dev/null | cut -c1-200 | tail -12
for d in $W/t16 $W/g16; do [ -f $d/results.md ] && tail -6 $d/results.md; done
[ -f $W/p16/results.md ] && sed -n 12,16p $W/p16/results.md
