#!/usr/bin/env bash
# Session 25's GPU calls: one call = the steps named in STEPS, each under its own time limit (scripts/gpu_steps.sh).
# Set-up as docs/results/session23/s23_call.sh's header (tmp_gpu/ with lm-scale-state.tgz: the tokenizer session 23
# trained on the device's python-source corpus; carry: ["tmp_gpu"]), plus cp docs/results/session25/s25_call.sh tmp_gpu/.
#   probe:FAMILY:MODE  issue #15's NaN probe (docs/results/session24/nan_probe.py; a fresh machine tokenizes first)
#   dmak               issue #13: windowed DMA with the list and the key-major dk/dv paths side by side, 16K and 64K
#   dmacuda            the CUDA parity tests of the DMA kernels
#   dmt                issue #13: the windowed DMA bench at this code and at 62087be (before the forward/dq loop
#                      trimming merged in 02e1aff), one after the other on the same machine
#   fixcheck           session 25's fix of compiled packed training: the packed CUDA tests (attention and model,
#                      compiled with Inductor against eager), then the compiled probe must train llama-base finite
#   C=c1 STEPS="probe:llama:compiled+graphed dmak probe:llama:eager" bash tmp_gpu/s25_call.sh
set -u
source scripts/gpu_steps.sh
cp tmp_gpu/s25_call.sh "$W/"
mkdir -p runs/probe && [ -d runs/probe/cache ] || tar xzf tmp_gpu/lm-scale-state.tgz -C runs/probe
for s in $STEPS; do case $s in
  probe:*) fm=${s#probe:}; f=${fm%%:*}; m=${fm#*:}
     step ${WANT:-300} probe_${f}_$m python docs/results/session24/nan_probe.py $f $m runs/probe/cache \
       $W/probe_${f}_$m.json ${PLR:-1e-3}
     grep -v "^step" $W/probe_${f}_$m.log | tail -40; grep "^step" $W/probe_${f}_$m.log | tail -3 ;;
  dmak) step 150 dmak env TRITON_PRINT_AUTOTUNING=1 python -m wonderful_matrices.bench.dma --out $W/dmak \
          --lengths 16384 65536 --batches --packed-length 0 --kernels
     grep -E "window 2048|causal" $W/dmak.log | tail -12 ;;
  fixcheck) step 300 fix_cuda python -m pytest -q -p no:cacheprovider tests/ops/test_dma_cuda.py \
       tests/train/test_compiled_training.py -k "packed and cuda"
     tail -5 $W/fix_cuda.log ;;
  dmt) mkdir -p /tmp/old && git archive 62087be src | tar -x -C /tmp/old
     for v in new old; do [ $v = old ] && P=/tmp/old/src || P=$PWD/src
       step 150 dmt_$v env PYTHONPATH=$P:$PWD/tests python -m wonderful_matrices.bench.dma --out $W/dmt_$v \
         --lengths 16384 65536 --batches --packed-length 0 --kernels
       grep -E "window 2048 triton \|" $W/dmt_$v.log | head -4; done ;;
  dmacuda) step 200 dma_cuda python -m pytest -q -p no:cacheprovider -x tests/ops/test_dma_cuda.py
     tail -5 $W/dma_cuda.log ;;
esac; done
cat $W/steps.txt
