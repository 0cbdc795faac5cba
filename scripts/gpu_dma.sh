#!/usr/bin/env bash
# DMA on one GPU, from the repository root, < 10 minutes: (a) CUDA parity tests of the triton/torch DMA paths
# and of the decode steps (torch, fused Triton, CUDA-graph capture) against their oracles, and of the window
# selection, (b) bench/dma.py at full scale (triton, torch, SDPA cuDNN, Flex; selection-stage time per T; decode
# steps eager and CUDA-graphed, torch and [triton fused]).
# Each stage runs under `timeout` and a failure does not stop the next. Writes $OUT/dma.log (everything) and
# $OUT/dma_results.tgz; prints a short table last.
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
LOG="$OUT/dma.log"
RES=$(mktemp -d)
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  echo "=== parity tests"
  timeout 200 python3 -m pytest -q -p no:cacheprovider tests/ops/test_ops_cuda.py -k "dma" -x -rf 2>&1 | tail -25
  echo "=== selection tests (select_blocks vs the oracle; CUDA vs CPU at 8K keys, window 2048)"
  timeout 120 python3 -m pytest -q -p no:cacheprovider tests/ops/test_dma_select.py -x -rf 2>&1 | tail -15
  echo "=== bench dma (full)"
  timeout "${BENCH_TIMEOUT:-240}" python3 -m wonderful_matrices.bench.dma --out "$RES/dma" 2>&1 | grep -v "^|"
  echo "bench exit: $?"
} > "$LOG" 2>&1
tar czf "$OUT/dma_results.tgz" -C "$RES" . 2>/dev/null
grep -E "passed|failed|error|Error" "$LOG" | head -20
python3 - "$RES/dma/results.json" <<'PY'
import json, sys
try:
    rows = json.load(open(sys.argv[1]))["rows"]
except Exception as exc:  # noqa: BLE001
    sys.exit(f"no results: {exc}")
f = lambda x: f"{x:.3f}" if isinstance(x, float) else ("-" if x is None else str(x)[:40])
print(f"{'part':6} {'T/ctx':>6} {'b':>2} {'impl':46} {'fwd':>8} {'fwd+bwd':>8} {'step':>8} {'ratio':>7} err")
for r in rows:
    print(f"{r['part']:6} {r.get('T') or r.get('context'):>6} {f(r.get('batch')):>2} {r['impl'][:46]:46} "
          f"{f(r.get('fwd_ms')):>8} {f(r.get('fwd_bwd_ms')):>8} {f(r.get('step_ms')):>8} "
          f"{f(r.get('sdpa_time / time')):>7} {f(r.get('error'))}")
PY
