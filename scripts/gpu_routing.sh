#!/usr/bin/env bash
# Product-key routing on one GPU, from the repository root:  OUT=/some/dir bash scripts/gpu_routing.sh
# 1. CUDA parity of the fused top-k (forward and both backward kernels: fp32/bf16/fp16, cheems-base's shape
#    √N = 48 and √N = 129 past the dense backward, N up to 2^20) and the sm_90 compile tests of its kernels;
#    the CDMoE layer tests (the autocast cast);
# 2. scripts/topk_bench.py: top-k fwd and fwd+bwd at cheems-base's routing (T = 32768, H = 4, √N = 48, k = 8) and
#    bench.cdmoe_target's N = 1024 and 2^20 shapes, the dense and the atomic backward side by side;
# 3. bench.cdmoe_target (the layer at N = 1024 and 2^20, parts; no MoE baselines' extra grid).
# Each stage under `timeout`; the script goes on after a failure. Writes $OUT/gpu_routing.log and
# $OUT/cdmoe_target/ (results.json, results.md). Under 4 minutes.
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
LOG="$OUT/gpu_routing.log"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
status=()

stage() {  # stage NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  echo "=== $name (timeout ${limit}s): $*" | tee -a "$LOG"
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log" >>"$LOG"
  local rc=${PIPESTATUS[0]}
  status+=("$name: exit $rc after $((SECONDS - start)) s$([ $rc -eq 124 ] && echo ' (timed out)')")
}

{
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} 2>&1 | tee -a "$LOG"

stage tests 80 $PY -m pytest -q -p no:cacheprovider -rfE \
  "tests/ops/test_experts_cuda.py::test_product_key_triton_cuda" \
  "tests/ops/test_experts_cuda.py::test_product_key_and_mixture_cuda" \
  "tests/ops/test_experts_cuda.py::test_product_key_layers_bf16_train_step_cuda" \
  tests/ops/test_product_key_triton_compile.py tests/layers/test_cdmoe_layer.py
stage topk 30 $PY scripts/topk_bench.py
stage target 110 $PY -m wonderful_matrices.bench.cdmoe_target --out "$OUT/cdmoe_target"

echo "=== failures (tests)"; grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | head -20; tail -n 1 "$OUT/tests.log"
echo "=== stages"; printf '%s\n' "${status[@]}"
echo "=== topk (ms)"; cat "$OUT/topk.log"
echo "=== cdmoe_target topk/routing/layer rows (ms)"; grep -E "^N=.*(topk|routing|layer)" "$OUT/target.log" | head -40
