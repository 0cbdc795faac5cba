#!/usr/bin/env bash
# session 9 call 3 (the last 6 device minutes): the failing short-row Flex case alone with its traceback, then the
# SSD CUDA file until the budget ran out (cut by timeout at 340 s: 51 passed, none failed, before the cut)
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=$PWD/.triton_cache
timeout 100 python3 -m pytest -p no:cacheprovider -x --tb=short -q -k "no_window_flex_cuda and 3-7 or packed_cuda and None" tests/ops/test_dma_cuda.py > $OUT/flex_fail.log 2>&1
timeout $((340 - SECONDS)) python3 -m pytest -n 8 --dist loadgroup -p no:cacheprovider -rfE -v --durations=20 tests/ops/test_ssd_cuda.py > $OUT/cuda_ssd.log 2>&1
