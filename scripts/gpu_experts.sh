#!/usr/bin/env bash
# CDMoE / expert mixture on one GPU, from the repository root:  OUT=/some/dir bash scripts/gpu_experts.sh
# 1. CUDA parity tests of product-key top-k (the fused Triton kernel included) and expert_mixture (torch and
#    triton backends, fp32/bf16/fp16; PKM, PEER and CDMoE layers in bf16) and the sm_90 compile tests of the Triton
#    kernels;
# 2. bench.cdmoe_target: CDMoE 8 heads x top-16, 8192 x 1024 bf16, N = 1024 and 2^20, backends torch,
#    triton+torch-topk (before the fused top-k) and triton, fwd and fwd+bwd, parts layer / routing / topk /
#    mixture / shared; loop and grouped MoE at N = 1024;
# 3. the full bench.experts grid under a timeout (it prints rows as it goes; results files only if it finishes).
# Every stage runs under `timeout` and the script continues after a failure. Writes $OUT/gpu_experts.log and
# $OUT/gpu_experts.tgz (result folders and per-stage logs); the short target table is printed last. About 5
# minutes at most (TESTS_TIMEOUT, TARGET_TIMEOUT, EXPERTS_TIMEOUT seconds per stage; raise EXPERTS_TIMEOUT to ~1500
# for the whole experts grid). A CPU dry run of the plumbing: BENCH_ARGS=--quick OUT=/tmp/x bash scripts/gpu_experts.sh
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
RES=$(mktemp -d)
LOG="$OUT/gpu_experts.log"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
status=()

stage() {  # stage NAME SECONDS COMMAND...: run with a timeout, log everything, remember the exit code
  local name=$1 limit=$2; shift 2
  echo "=== $name (timeout ${limit}s): $*" | tee -a "$LOG"
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$RES/$name.log" >>"$LOG"
  local rc=${PIPESTATUS[0]}
  status+=("$name: exit $rc after $((SECONDS - start)) s$([ $rc -eq 124 ] && echo ' (timed out)')")
  echo "=== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$LOG"
}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader
  $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} 2>&1 | tee -a "$LOG"

stage tests ${TESTS_TIMEOUT:-120} $PY -m pytest -q -p no:cacheprovider -rfE \
  tests/ops/test_experts_cuda.py tests/ops/test_expert_mixture_triton_compile.py \
  tests/ops/test_product_key_triton_compile.py
tail -n 3 "$RES/tests.log"
stage target ${TARGET_TIMEOUT:-150} $PY -m wonderful_matrices.bench.cdmoe_target --out "$RES/cdmoe_target" ${BENCH_ARGS:-}
stage experts ${EXPERTS_TIMEOUT:-40} $PY -m wonderful_matrices.bench.experts --out "$RES/experts" ${BENCH_ARGS:-} ${EXPERTS_ARGS:-}

tar czf "$OUT/gpu_experts.tgz" -C "$RES" . 2>>"$LOG"
echo
echo "=== failures (tests)"; grep -E "^(FAILED|ERROR)" "$RES/tests.log" | head -20; tail -n 1 "$RES/tests.log"
echo "=== stages"; printf '%s\n' "${status[@]}"
echo "=== cdmoe_target (ms)"
grep -E "^N=" "$RES/target.log" | tail -70
if [ -f "$RES/cdmoe_target/results.md" ]; then sed -n '/## Targets/,$p' "$RES/cdmoe_target/results.md"; fi
