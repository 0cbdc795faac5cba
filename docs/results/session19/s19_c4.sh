#!/usr/bin/env bash
set -u
export PYTHONPATH=$PWD/src:$PWD/tests PYTHONUNBUFFERED=1
mkdir -p $OUT/c4; W=$OUT/c4
nvidia-smi --query-gpu=name --format=csv,noheader > $W/device.txt
timeout 170 python tmp_gpu/packed_compile.py cheems-base > $W/packed_compile.log 2>&1; echo "packed rc $?"
grep -E "ok|FAILED" $W/packed_compile.log
timeout 75 python -m pytest -v -p no:cacheprovider --tb=short tests/ops/test_ssd_cuda.py -k silu > $W/ssd_silu.log 2>&1; echo "silu rc $?"
tail -3 $W/ssd_silu.log
