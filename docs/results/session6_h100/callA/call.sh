#!/usr/bin/env bash
# Session 6 call A: the complete CUDA parity suite, two gpu_check instances side by side (8 xdist workers each).
set -uo pipefail
nvidia-smi --query-gpu=name --format=csv,noheader
export BUDGET=${BUDGET:-570}
(AREA="ssd experts" OUT=$OUT WORKERS=8 bash scripts/gpu_check.sh > $OUT/check1.txt 2>&1) &
(AREA="dma norm models" OUT=$OUT WORKERS=8 bash scripts/gpu_check.sh > $OUT/check2.txt 2>&1) &
wait
cat $OUT/check1.txt $OUT/check2.txt | grep -v Warning | tail -60
