#!/usr/bin/env bash
# Fused norm and loss on one GPU, from the repository root, < 5 minutes:
# (a) CUDA parity tests of the Triton RMSNorm (+ residual add; bf16/fp16/fp32, mixed dtypes, torch.compile without
#     graph breaks), the gated RMSNorm, the chunked linear + cross-entropy under bf16 autocast, and every tiny
#     preset's fused bf16 training step against the unfused one;
# (b) `wm bench profile` of cheems-base and llama-base (8 x 4096 tokens, bf16 autocast, AdamW), fused and unfused;
# (c) training tokens/s and peak memory, fused vs unfused, same process, at 8 x 4096 and 2 x 16384 tokens.
# Each stage runs under `timeout`; a failure does not stop the next. Writes into $OUT: fused.log (everything),
# profile.md / profile.json (the tables), throughput.json, traces.tgz (Chrome traces); prints a summary last.
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
LOG="$OUT/fused.log"
RES=$(mktemp -d)
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  echo "=== parity tests"
  timeout 240 python3 -m pytest -q -p no:cacheprovider -rf tests/ops/test_norm_loss_cuda.py \
    tests/models/test_models_cuda.py::test_fused_training_step_bf16_cuda 2>&1 | tail -30
  echo "=== wm bench profile"
  timeout 150 python3 -m wonderful_matrices.cli bench profile --presets cheems-base,llama-base \
    --variants fused,unfused --steps 2 --out "$RES/profile" 2>&1 | grep -v "USDT"
  echo "profile exit: $?"
  echo "=== throughput, fused vs unfused"
  timeout 150 python3 - "$OUT/throughput.json" <<'PY'
import json, sys, torch
from wonderful_matrices.bench.lm import training_throughput
from wonderful_matrices.models import presets
dev, rows = torch.device("cuda"), []
for seq_len in (4096, 16384):
    for name in ("cheems-base", "llama-base"):
        for fused in (False, True):
            r = training_throughput(presets.get(name, use_cache=False), seq_len, 32768, dev, steps=5, fused=fused)
            rows.append({"preset": name, "seq_len": seq_len, "fused": fused, **r})
            print(rows[-1], flush=True)
json.dump({"device": torch.cuda.get_device_name(0), "rows": rows}, open(sys.argv[1], "w"), indent=1)
PY
} > "$LOG" 2>&1
cp "$RES/profile/results.md" "$OUT/profile.md" 2>/dev/null
cp "$RES/profile/results.json" "$OUT/profile.json" 2>/dev/null
tar czf "$OUT/traces.tgz" -C "$RES/profile" $(cd "$RES/profile" 2>/dev/null && ls trace-*.json.gz) 2>/dev/null
grep -E "passed|failed|error|Error" "$LOG" | head -20
python3 - "$OUT/throughput.json" "$OUT/profile.json" <<'PY'
import json, sys
try:
    rows = json.load(open(sys.argv[1]))["rows"]
    for r in rows:
        tps = r["tokens_per_s"]
        print(f"{r['preset']:12} L={r['seq_len']:6} fused={r['fused']!s:5} tokens/s="
              f"{'OOM' if tps is None else f'{tps:,.0f}'} peak={r['peak_memory_gb']}")
    get = {(r["preset"], r["seq_len"], r["fused"]): r["tokens_per_s"] for r in rows}
    for L in (4096, 16384):
        for f in (False, True):
            c, l = get.get(("cheems-base", L, f)), get.get(("llama-base", L, f))
            if c and l:
                print(f"cheems/llama at {L}, fused={f}: {c / l:.3f}x")
except Exception as exc:  # noqa: BLE001
    print(f"no throughput: {exc}")
try:
    for r in json.load(open(sys.argv[2]))["rows"]:
        print(r)
except Exception as exc:  # noqa: BLE001
    print(f"no profile: {exc}")
PY
