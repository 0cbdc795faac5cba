#!/usr/bin/env bash
# Session 22 (prepared in session 21; cd and mq added in session 22): one call = the steps named in STEPS, each under its own time limit.
# First: mkdir -p tmp_gpu && cp docs/results/session22/s22_call.sh docs/results/session20/s17_lmscale.sh tmp_gpu/
# (tmp_gpu/ is ignored: echo /tmp_gpu/ >> .git/info/exclude), and pass carry: ["tmp_gpu"] with every call.
#   C=c1 STEPS="g16 t16" bash tmp_gpu/s22_call.sh   graphed pairs, then plain compiled pairs (a cold machine may cut t16)
#   C=c2 STEPS="p16 jt" ...       the 16K profile; the fused-step and wm train --cuda-graph CUDA tests
#   C=c3 STEPS="half2" ...;  C=c4 STEPS="dma" ...    the rest of the CUDA suite of the measured code; each brings
#   the Triton cache back (triton_cache.tar.xz in the call's tar): if a machine is lost mid-session, put the newest
#   one at .gpu_cache/triton_cache.tar.xz and add ".gpu_cache" to carry, so the fresh machine skips the compiles
#   STEPS="dm": windowed DMA with the skipped carried keys (session 22) against the code before (6d09c4b), one machine
#   C=c5 STEPS="cd": bench.cdmoe_target (#17's 8 ms target is an H200 target);  STEPS="mq": #15 item 2(b)'s first
#   slice, DMA with a learned 64-key window against sliding-window attention and SSD of the same state (6 runs, 3 at once)
#   C=c6 STEPS="lms" ...  (issue #15 lm-scale, back-to-back warm calls; prefix GRAPHED_TRAINING=1 when g16 showed the
#   graphed step faster, and keep it for every lm-scale call: the table compares the runs' tokens/s)
set -u
source scripts/gpu_steps.sh
cp tmp_gpu/s22_call.sh "$W/"
PT="python -m pytest -v -p no:cacheprovider --tb=long"
TP="python scripts/train_throughput.py --compiled-only --seq-len 16384"
PAIRS="--variants cheems-base llama-base cheems-base llama-base"
for s in ${STEPS}; do case $s in
  g16) step 330 g16 $TP --graphed --out $W/g16 $PAIRS ;;
  t16) step 330 t16 $TP --out $W/t16 $PAIRS ;;
  g4) step 330 g4 python scripts/train_throughput.py --compiled-only --graphed --seq-len 4096 --out $W/g4 $PAIRS ;;
  jt) step 240 jt_cuda $PT tests/train/test_graph_step.py tests/train/test_compiled_training.py tests/models/test_models_cuda.py -k "graph_step or reduce_overhead or fused_training_step" ;;
  p16) step 200 p16 python -c "from wonderful_matrices.bench import profile; profile.run('$W/p16', presets=('cheems-base','llama-base'), variants=('compiled',), seq_len=16384, batch=2, steps=3)"
       [ -f $W/p16/trace-cheems-base-compiled.json.gz ] && for m in cheems llama; do python docs/results/session11_h100/trace_kinds.py $W/p16/trace-$m-base-compiled.json.gz 3 > $W/p16/kinds-$m.txt 2>&1; done; pack ;;
  half1|half2|dma) L=$((LIMIT - SECONDS - 30)); CACHE_OUT=1 AREA=$s BUDGET=$L TIMEOUT=$L OUT=$W bash scripts/gpu_check.sh > $W/gpu_check_$s.txt 2>&1; pack ;;
  dm) mkdir -p /tmp/old && git archive 6d09c4b src | tar -x -C /tmp/old
      step 150 dm_new python docs/results/session22/dma_ranges.py new
      step 150 dm_old env PYTHONPATH=/tmp/old/src python docs/results/session22/dma_ranges.py old
      step 100 dm_new2 python docs/results/session22/dma_ranges.py new2 ;;
  cd) step 200 cdmoe python -m wonderful_matrices.bench.cdmoe_target --backends triton --counts 1024,1048576 --no-moe --out $W/cdmoe ;;
  mq) L=$((LIMIT - SECONDS - 10)); mkdir -p $OUT/mq
      WINDOWS=64 CELLS="1024:128" LRS="2.15e-3 1e-2" STEPS=10000 SLOTS=3 CALL_S=$L OUT=$OUT/mq bash scripts/gpu_claims.sh mqar-window > /dev/null 2>&1
      tail -c 2500 $OUT/mq/summary.log ;;
  lms) L=$((LIMIT - SECONDS - 10)); mkdir -p $OUT/lms
       OUT=$OUT/lms CALL_S=$L bash tmp_gpu/s17_lmscale.sh > /dev/null 2>&1; echo "lm-scale for $L s"; tail -c 2500 $OUT/lms/summary.log ;;
esac; done
grep -hE " passed| failed|^FAILED" $W/*_cuda.log $W/gpu_check_*.txt 2>/dev/null | cut -c1-200 | tail -12
for d in $W/g16 $W/t16; do [ -f $d/results.md ] && tail -6 $d/results.md; done
[ -f $W/p16/results.md ] && sed -n 12,16p $W/p16/results.md
