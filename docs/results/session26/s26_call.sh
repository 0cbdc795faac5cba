#!/usr/bin/env bash
# Session 26's GPU calls: one call = the steps named in STEPS, each under its own time limit (scripts/gpu_steps.sh).
# Set-up as docs/results/session23/s23_call.sh's header (tmp_gpu/ with lm-scale-state.tgz, s17_lmscale.sh, site/),
# plus cp docs/results/session26/s26_call.sh tmp_gpu/; carry: ["tmp_gpu"].
#   fixcheck  session 25's fix of compiled packed training: the packed CUDA tests (attention and model, compiled with
#             Inductor against eager at 2048 tokens per row); "lms" runs only if they pass (FORCE=1 runs it anyway)
#   lms       issue #15 item 1 (claim 4 at scale): scripts/gpu_claims.sh lm-scale, compiled and every step replayed
#             from a CUDA graph, for the rest of the call; resumable on the warm machine (runs/lm-scale)
#   dmt       issue #13: the windowed DMA bench at this code and at 62087be (before the loop trimming of 02e1aff)
#   dmacuda   the CUDA parity tests of the DMA kernels
#   cd        issue #17: bench.cdmoe_target, the million-expert layer (its 8 ms target is an H200 target)
#   C=c1 STEPS="fixcheck lms" bash tmp_gpu/s26_call.sh
set -u
source scripts/gpu_steps.sh
cp tmp_gpu/s26_call.sh "$W/"
FIXED=1
for s in $STEPS; do case $s in
  fixcheck) step 300 fix_cuda python -m pytest -v -p no:cacheprovider tests/ops/test_dma_cuda.py \
       tests/train/test_compiled_training.py -k "packed and cuda"
     tail -5 $W/fix_cuda.log; grep -q " passed" $W/fix_cuda.log && ! grep -qE " failed| error" $W/fix_cuda.log || FIXED=0 ;;
  lms) if [ "$FIXED" = 1 ] || [ "${FORCE:-0}" = 1 ]; then
       L=$((LIMIT - SECONDS - 10)); mkdir -p $OUT/lms
       GRAPHED_TRAINING=1 OUT=$OUT/lms CALL_S=$L bash tmp_gpu/s17_lmscale.sh > /dev/null 2>&1
       echo "lm-scale for $L s"; tail -c 3000 $OUT/lms/summary.log
       grep -hE "diverged|step .*loss" runs/lm-scale/*/train.log 2>/dev/null | tail -5
     else echo "lms skipped: the packed CUDA tests failed"; fi ;;
  dmt) mkdir -p /tmp/old && git archive 62087be src | tar -x -C /tmp/old
     for v in new old; do [ $v = old ] && P=/tmp/old/src || P=$PWD/src
       step 150 dmt_$v env PYTHONPATH=$P:$PWD/tests python -m wonderful_matrices.bench.dma --out $W/dmt_$v \
         --lengths 16384 65536 --batches --packed-length 0 --kernels
       grep -E "window 2048 triton \|" $W/dmt_$v.log | head -4; done ;;
  dmacuda) step 240 dma_cuda python -m pytest -v -p no:cacheprovider tests/ops/test_dma_cuda.py
     tail -5 $W/dma_cuda.log ;;
  cd) step 200 cdmoe python -m wonderful_matrices.bench.cdmoe_target --backends triton --counts 1024,1048576 \
       --no-moe --out $W/cdmoe
     tail -8 $W/cdmoe.log ;;
esac; done
cat $W/steps.txt
