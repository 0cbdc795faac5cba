#!/usr/bin/env bash
# Issue #15's NaN: docs/results/session24/nan_probe.py on the GPU machine, one probe per step (each under WANT
# seconds). Set-up as docs/results/session23/s23_call.sh's header (tmp_gpu/ with lm-scale-state.tgz, the tokenizer
# session 23 trained on the device's python-source corpus; carry: ["tmp_gpu"]), then copy this file to tmp_gpu/.
#   C=c1 PROBES="llama:eager" WANT=560 bash tmp_gpu/s24_call1.sh      a fresh machine tokenizes the corpus first
#   C=c2 PROBES="llama:compiled+graphed cheems:compiled+graphed" WANT=280 bash tmp_gpu/s24_call1.sh   (warm)
# Session 24 ran it with PROBES="llama:eager cheems:eager" WANT=330 on a fresh H100: tokenizing (then one document
# per encode_batch call, ~6 minutes) filled both steps (call1_h100/); a warm call then probed llama eager for 375 s
# (call2_h100/: finite through step 100 when the time ran out).
set -u
source scripts/gpu_steps.sh
mkdir -p runs/probe && tar xzf tmp_gpu/lm-scale-state.tgz -C runs/probe
P=docs/results/session24/nan_probe.py
for fm in $PROBES; do f=${fm%%:*}; m=${fm#*:}
  step ${WANT:-300} probe_${f}_$m python $P $f $m runs/probe/cache $W/probe_${f}_$m.json ${PLR:-1e-3}
done
for f in $W/probe_*.log; do echo "== $f"; grep -v "^step" $f | tail -30; grep "^step" $f | tail -3; done
