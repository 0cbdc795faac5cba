#!/usr/bin/env bash
# Packed documents (seq_idx) on one GPU, run from the repository root. Stages (STAGES="ssd dma tests train" by
# default; all four take about 11 minutes, more than one 10-minute call: run "ssd dma tests" and "train" apart):
#   ssd    bench: SSD triton at the paper's shape (8 x 4096 tokens, 64 heads x 64, state 128, chunk 256, bf16),
#          forward and forward+backward, unpacked and packed (documents of 1..1024 tokens) side by side with the
#          overhead in percent of wall and GPU busy time (target: <= 10% of GPU time)
#          -> $OUT/packing/ssd/results.json|md (~2 min);
#   dma    bench: DMA at 16K tokens (16 heads x 128, bf16), window 2048 (Triton) and no window (FlexAttention),
#          one row against 16 documents packed, with "packed / unpacked" in wall and GPU time (target: <= 1.10)
#          -> $OUT/packing/dma/results.json|md (~2 min);
#   tests  CUDA parity tests: SSD with seq_idx (triton and torch, float32 and bf16) against each document alone, a
#          packed row of every tiny preset against its documents alone, and the DMA op's packed tests (~2 min);
#   train  wm train --preset cheems-base --data python-source, TRAIN_STEPS (default 400) steps of 8 x 2048 tokens
#          (the corpus built and tokenized first, ~1 min), evaluation every TRAIN_STEPS / 4 steps -> $OUT/train_base/ (log, summary.json with the
#          corpus manifest, metrics.jsonl, loss.png, and wm eval's line with the unigram baseline) (~4 min).
#   dma_sweep (not in the default): the order that ran out of memory before the fix in ops/dma/biased_causal.py
#          (a sweep over four lengths, then the packed 16K row): every "dma no window" row must have times
#          -> $OUT/packing/dma_sweep/ (~5 min).
# Each stage runs under `timeout` (T_SSD, T_DMA, T_TESTS, T_TRAIN, T_SWEEP seconds); a failure does not stop the
# next. Everything goes to $OUT, the log to $OUT/gpu_packing.log.
set -uo pipefail
OUT=${OUT:-out}
STAGES=${STAGES:-ssd dma tests train}
STEPS=${TRAIN_STEPS:-400}
mkdir -p "$OUT/packing"
LOG="$OUT/gpu_packing.log"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
has() { [[ " $STAGES " == *" $1 "* ]]; }
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  echo "stages: $STAGES"
  if has ssd; then
    echo "=== stage: bench ssd --packed"
    timeout "${T_SSD:-150}" $PY -m wonderful_matrices.bench.ssd --packed --out "$OUT/packing/ssd" 2>&1 | tail -20
    echo "rc=${PIPESTATUS[0]}"
  fi
  if has dma; then
    echo "=== stage: bench dma, packed part only (16K tokens, 16 documents)"
    timeout "${T_DMA:-180}" $PY -m wonderful_matrices.bench.dma --lengths --batches --packed-length 16384 \
        --out "$OUT/packing/dma" 2>&1 | grep -v "^{" | tail -20
    echo "rc=${PIPESTATUS[0]}"
  fi
  if has tests; then
    echo "=== stage: CUDA packed parity tests"
    timeout "${T_TESTS:-180}" $PY -m pytest -q -p no:cacheprovider -o console_output_style=classic -rfE \
        tests/ops/test_ssd_cuda.py::test_ssd_packed_cuda tests/ops/test_dma_cuda.py::test_dma_packed_cuda \
        tests/models/test_models_cuda.py::test_packed_model_cuda 2>&1 | tail -25
    echo "rc=${PIPESTATUS[0]}"
  fi
  if has train; then
    echo "=== stage: wm train --preset cheems-base --data python-source"
    RUN=${RUN_DIR:-/tmp/gpu_packing_cheems_base}
    rm -rf "$RUN"
    mkdir -p "$OUT/train_base"
    timeout "${T_TRAIN:-420}" $PY -m wonderful_matrices.cli train --preset cheems-base --data python-source \
        --max-steps "$STEPS" --batch-size 8 --seq-len 2048 --eval-interval $((STEPS / 4)) --eval-rows 64 \
        --save-interval "$STEPS" \
        --log-interval 20 --no-progress --out "$RUN" 2>&1 | tee "$OUT/train_base/train.log" | tail -12
    echo "rc=${PIPESTATUS[0]}"
    timeout 120 $PY -m wonderful_matrices.cli eval "$RUN" --max-rows 64 2>&1 | tee "$OUT/train_base/eval.log"
    cp "$RUN"/summary.json "$RUN"/metrics.jsonl "$RUN"/run_config.json "$RUN"/loss.png "$OUT/train_base/" 2>/dev/null
  fi
  if has dma_sweep; then
    echo "=== stage: bench dma, a four-length sweep and then the packed rows (the order that ran out of memory)"
    timeout "${T_SWEEP:-420}" $PY -m wonderful_matrices.bench.dma --lengths 1024 2048 4096 8192 --batches \
        --packed-length 16384 --out "$OUT/packing/dma_sweep" 2>&1 | grep -v "^{" | tail -30
    echo "rc=${PIPESTATUS[0]}"
  fi
  date -u
} 2>&1 | tee "$LOG"
