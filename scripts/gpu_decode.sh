#!/usr/bin/env bash
# The fused decoding kernels on a GPU (issue 18, item 2), in one call of under 8 minutes. From the repository root:
#   OUT=DIR bash scripts/gpu_decode.sh
# 1. CUDA parity: the fused SSD decoding step against the float64 torch path (float32/bf16/fp16), the DMA decoding
#    step (its fused inputs against the float64 projection, the fused attention step against the torch step, no
#    host sync), the CDMoE decoding step in three launches (against the float64 layer, CUDA graph, no host sync),
#    GraphedDecoder against eager steps, and the greedy tokens of every tiny preset with the fused
#    kernels against the torch paths -> DIR/cuda_decode.log
# 2. `wm bench generate` of cheems-base and llama-base at 4K context, batch 1: eager and graphed tokens/s and the
#    CUDA kernels of one decoding step (launches_per_step) -> DIR/generate/results.{json,md} and DIR/generate.log
# Knobs: PYTHON (default python3), TRITON_CACHE_DIR (default .triton_cache/ in the repository).
set -uo pipefail
OUT=${OUT:-out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$PWD/.triton_cache}
{ nvidia-smi --query-gpu=name --format=csv,noheader; git rev-parse HEAD 2>/dev/null
  $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } > "$OUT/cuda_decode.log"
timeout 330 $PY -m pytest -q -p no:cacheprovider -rfE tests/ops/test_ssd_cuda.py tests/ops/test_dma_cuda.py \
  tests/ops/test_experts_cuda.py tests/models/test_models_cuda.py \
  -k "fused_decode_step or fused_decoding_kernels or graphed_decoder_replays or step_inputs or never_syncs \
      or cdmoe_decode" \
  >> "$OUT/cuda_decode.log" 2>&1
tests_rc=$?
tail -n 5 "$OUT/cuda_decode.log"
timeout 150 $PY - "$OUT/generate" > "$OUT/generate.log" 2>&1 <<'PY'
import sys
from wonderful_matrices.bench import generate
generate.run(sys.argv[1], presets="cheems-base,llama-base", contexts=(4096,), batches=(), prefill_lengths=(),
             reps=50, anchor=False)
PY
bench_rc=$?
grep -E "decode|rows" "$OUT/generate.log"
exit $(( tests_rc != 0 || bench_rc != 0 ))
