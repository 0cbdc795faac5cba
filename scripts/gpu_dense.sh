#!/usr/bin/env bash
# The dense (GEMM) expert-mixture backend on one GPU, from the repository root:  OUT=/some/dir bash scripts/gpu_dense.sh
# 1. CUDA parity tests of everything "dense" in tests/ops/test_experts_cuda.py: the dense mixture against float64
#    (fp32/bf16/fp16, every activation, several token chunks), the PKM read, the "auto" choice (cheems-base's
#    N = 2304 and N = 1024 go dense, 2^16 does not), the product-key + mixture case and the CDMoE/PEER/PKM bf16
#    training step with backend "dense";
# 2. bench.cdmoe_target restricted to triton vs dense at N = 1024 and 2^16 (8192 x 1024 bf16, 8 heads x top-16),
#    parts layer / routing / topk / mixture / shared, fwd and fwd+bwd;
# 3. training tokens/s and peak memory (8 x 4096 and 2 x 16384 tokens, bf16 autocast, AdamW): cheems-base with
#    cdmoe_backend "auto" (now dense) and "triton" (the gather kernels), and llama-base, in one process.
# Every stage runs under `timeout` and the script continues after a failure; about 5 minutes at most. Writes
# $OUT/gpu_dense.log (everything), $OUT/cdmoe_target/ (results.json / results.md), $OUT/throughput.json; prints the
# test summary, the mixture rows and the throughput ratios last.
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
LOG="$OUT/gpu_dense.log"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  echo "=== parity tests"
  timeout --kill-after=10 120 $PY -m pytest -q -p no:cacheprovider -rf tests/ops/test_experts_cuda.py -k dense 2>&1 \
    | tail -40
  echo "=== bench.cdmoe_target: triton vs dense at N = 1024 and 65536"
  timeout --kill-after=10 100 $PY -m wonderful_matrices.bench.cdmoe_target --out "$OUT/cdmoe_target" \
    --backends triton,dense --counts 1024,65536 --no-moe 2>&1 | grep -E "^N=|Error|error"
  echo "=== training throughput"
  timeout --kill-after=10 120 $PY - "$OUT/throughput.json" <<'PY'
import json, sys, torch
from wonderful_matrices.bench.lm import training_throughput
from wonderful_matrices.models import presets
dev, rows = torch.device("cuda"), []
for seq_len in (4096, 16384):
    for name, backend in (("cheems-base", "auto"), ("cheems-base", "triton"), ("llama-base", "auto")):
        r = training_throughput(presets.get(name, use_cache=False, cdmoe_backend=backend), seq_len, 32768, dev, steps=5)
        rows.append({"preset": name, "cdmoe_backend": backend, "seq_len": seq_len, **r})
        print(rows[-1], flush=True)
        json.dump({"device": torch.cuda.get_device_name(0), "rows": rows}, open(sys.argv[1], "w"), indent=1)
PY
} > "$LOG" 2>&1
grep -E "passed|failed|FAILED|rror" "$LOG" | head -20
grep -E "^N=.* (mixture|layer) " "$LOG"
$PY - "$OUT/throughput.json" <<'PY'
import json, sys
try:
    rows = json.load(open(sys.argv[1]))["rows"]
except Exception as exc:  # noqa: BLE001
    sys.exit(f"no throughput: {exc}")
get = {}
for r in rows:
    tps = r["tokens_per_s"]
    get[(r["preset"], r["cdmoe_backend"], r["seq_len"])] = tps
    print(f"{r['preset']:12} cdmoe={r['cdmoe_backend']:6} L={r['seq_len']:6} tokens/s="
          f"{'OOM' if tps is None else f'{tps:,.0f}'} peak={r['peak_memory_gb']}")
for L in (4096, 16384):
    llama = get.get(("llama-base", "auto", L))
    for backend in ("auto", "triton"):
        cheems = get.get(("cheems-base", backend, L))
        if cheems and llama:
            print(f"cheems-base (cdmoe {backend}) / llama-base at {L}: {cheems / llama:.3f}x")
PY
