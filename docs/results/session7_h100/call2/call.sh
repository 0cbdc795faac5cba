#!/usr/bin/env bash
# Session 7 call 1: the complete CUDA parity suite of main, two gpu_check instances side by side (5 workers each).
set -uo pipefail
nvidia-smi --query-gpu=name --format=csv,noheader
export BUDGET=${BUDGET:-565}
(AREA="ssd dma" OUT=$OUT WORKERS=5 bash scripts/gpu_check.sh > $OUT/check1.txt 2>&1) &
(AREA="experts norm models" OUT=$OUT WORKERS=5 bash scripts/gpu_check.sh > $OUT/check2.txt 2>&1) &
wait
cat $OUT/check1.txt $OUT/check2.txt | grep -v Warning | tail -70
