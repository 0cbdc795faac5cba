#!/usr/bin/env bash
# Session 11 call 1: #17 where the compiled step goes (4K and 16K), the product-key backwards, #13 DMA kernels.
set -u
export PYTHONPATH=$PWD/src TRITON_CACHE_DIR=$PWD/.triton_cache PYTHONUNBUFFERED=1
W=/tmp/s11/w; mkdir -p $W
cp tmp_gpu/call1.sh $W/
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > $W/device.txt
git rev-parse HEAD >> $W/device.txt
timeout 90 python scripts/experts_kernel_times.py > $W/experts_kernel_times.log 2>&1
timeout 200 python -c "
from wonderful_matrices.bench import profile
profile.run('$W/prof4k', presets=('cheems-base','llama-base'), variants=('compiled',), seq_len=4096, batch=8, steps=3)
" > $W/prof4k.log 2>&1
timeout 200 python -c "
from wonderful_matrices.bench import profile
profile.run('$W/prof16k', presets=('cheems-base','llama-base'), variants=('compiled',), seq_len=16384, batch=2, steps=3)
" > $W/prof16k.log 2>&1
timeout 120 python -m wonderful_matrices.bench.dma --out $W/dma --lengths 16384 65536 --batches --packed-length 0 --kernels > $W/dma.log 2>&1
mkdir -p $OUT/traces; mv $W/prof*/trace-*.json.gz $OUT/traces/ 2>/dev/null
tar -C /tmp/s11 -cJf $OUT/call1.tar.xz w
ls -la $OUT/traces; du -sh $OUT/*
tail -5 $W/*.log
