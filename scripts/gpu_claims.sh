#!/usr/bin/env bash
# The paper's experiments at full scale on one H200, in calls of at most 10 minutes (issue #7):
#   OUT=DIR bash scripts/gpu_claims.sh lm                 `wm bench lm` alone (its throughputs must not share the GPU)
#   OUT=DIR bash scripts/gpu_claims.sh position           issue #15 item 3: `wm bench position` on DATA (default
#                                                          python-source) with VARIANTS (default no_pe,rope,conv,data:
#                                                          the data-dependent rotary too), three seeds
#   OUT=DIR bash scripts/gpu_claims.sh position+mqar      `wm bench position`, and `wm bench mqar` with one process per
#                                                          cell of the paper, side by side (processes time-slice the
#                                                          GPU: session 2 measured ~140 ms per eager MQAR step this
#                                                          way; session 3, one process with graphed steps, 3-12 ms)
#   OUT=DIR bash scripts/gpu_claims.sh mqar-grid          MQAR as one job per (cell, mixer, learning rate), STEPS steps
#                                                          each (default 3000), SLOTS jobs per GPU (default 1) on every
#                                                          GPU of the machine, longest cells first; then one merged
#                                                          result (`wm bench mqar --merge`). CELLS / LRS (space-
#                                                          separated, e.g. CELLS="256:64 2048:256") / VOCAB
#                                                          override the paper's six cells / the four learning rates /
#                                                          its vocabulary of 8192; MIXERS (space-separated
#                                                          names of `wm bench mqar --mixers`) the three mixers.
#   OUT=DIR bash scripts/gpu_claims.sh mqar-window        issue #15 item 2(b): mqar-grid over the bounded-window
#                                                          mixers, DMA with keep_window w (dma-w<w>) against sliding-
#                                                          window attention (swa-w<w>) and SSD with the state bytes
#                                                          of a w-key cache (ssd-s<w>), w in 64 128 256, at T = 2048
#                                                          and 1024 (width 128), vocabulary 8192, LRS "1e-2 2.15e-3
#                                                          4.64e-4", STEPS 20000; every default overridable as above
#                                                          (e.g. WINDOWS="64 128", CELLS="1024:128"). Item 4 (the
#                                                          hybrid ratio): MIXERS="hyb7-w64 hyb3-w64 ..." (8 layers,
#                                                          r SSD per DMA layer, `wm bench mqar` docstring).
#   OUT=DIR bash scripts/gpu_claims.sh lm-scale           issue #15 item 1: `wm bench lm` one run per (family, seed) on
#                                                          python-source, TRAIN_TOKENS each (default 25000000),
#                                                          perplexity at EVAL_CONTEXTS (default "2048 8192 32768"),
#                                                          FAMILIES (default "cheems llama mamba2 jamba doge"),
#                                                          SEEDS (default "0 1" for cheems and llama, "0" for the
#                                                          others), one run at a time (the throughputs must not share
#                                                          the GPU), seed 0 of every family first; what is left when
#                                                          called again (runs in RUNS, default runs/lm-scale, are
#                                                          skipped when complete, resumed from their checkpoint when
#                                                          cut); then `wm bench lm --merge` of every complete run. The
#                                                          tokenizer is trained once, in RUNS/cache. DIR/lm-scale-state.tgz
#                                                          holds RUNS without checkpoints and token files (results,
#                                                          tokenizer: a few MB; one file, as the device returns files
#                                                          at most two folders deep): on a fresh machine pass it back
#                                                          as STATE=<carried path> so the finished runs and the
#                                                          tokenizer are reused; on the warm machine RUNS is still there.
#                                                          HYBRID_RATIO=3 trains the hybrids (cheems, jamba) 3:1
#                                                          (runs <preset>-3to1-seed<k>; item 4: FAMILIES=cheems).
#                                                          COMPILED_TRAINING=1 trains under torch.compile
#                                                          (`--compiled-training`; default off until its CUDA test,
#                                                          tests/train/test_compiled_training.py -k cuda, has passed).
#                                                          LR: the peak learning rate (default 1e-3; runs of
#                                                          another rate need another RUNS).
#                                                          GRAPHED_TRAINING=1 replays every step from a CUDA graph
#                                                          (`--graphed-training`; all runs of one table in one mode:
#                                                          their train_tokens_per_s are compared).
# Results: DIR/claims.tgz (each run's folder: results.json / results.md / PNG / log) and DIR/summary.log.
# Every MQAR process rewrites its results after each finished run, so a process cut by the time limit keeps them.
# Time limits (seconds): CALL_S for the whole call (default 560); MQAR_BUDGET_S per cell (default 60% of CALL_S: no run
# starts after 1.1x the budget, and a run in progress may need a while to finish).
set -uo pipefail
OUT=${OUT:-out}
MODE=${1:?mode: lm, lm-scale, position, position+mqar, mqar-grid or mqar-window}
CALL_S=${CALL_S:-560}
START=$(date +%s)
WORK=$(mktemp -d)
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
mkdir -p "$OUT"
if [ "$MODE" = mqar-window ]; then
  MIXERS=${MIXERS:-$(for w in ${WINDOWS:-64 128 256}; do echo -n "dma-w$w swa-w$w ssd-s$w "; done)}
  CELLS=${CELLS:-2048:128 1024:128} LRS=${LRS:-1e-2 2.15e-3 4.64e-4} STEPS=${STEPS:-20000} MODE=mqar-grid
fi

bench() {  # bench DIRNAME SECONDS NAME ARGS... -> $WORK/DIRNAME with results and run.log
  local dir=$1 seconds=$2
  shift 2
  mkdir -p "$WORK/$dir"
  timeout "$seconds" $PY -m wonderful_matrices.bench "$@" --out "$WORK/$dir" > "$WORK/$dir/run.log" 2>&1
  echo "rc=$? after $(( $(date +%s) - START )) s" >> "$WORK/$dir/run.log"
}

{
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  case "$MODE" in
    lm)
      bench lm $(( CALL_S - 10 )) lm
      ;;
    lm-scale)
      RUNS=${RUNS:-runs/lm-scale}
      FAMILIES=${FAMILIES:-cheems llama mamba2 jamba doge}
      mkdir -p "$RUNS" "$WORK/lm-scale"
      [ -n "${STATE:-}" ] && tar xzf "$STATE" -C "$RUNS"
      for seed in $(for f in $FAMILIES; do
                      case $f in cheems|llama) echo "${SEEDS:-0 1}" ;; *) echo "${SEEDS:-0}" ;; esac
                    done | tr ' ' '\n' | sort -nu); do
        families=$(for f in $FAMILIES; do
                     case $f in cheems|llama) s=${SEEDS:-0 1} ;; *) s=${SEEDS:-0} ;; esac
                     case " $s " in *" $seed "*) echo -n "$f " ;; esac
                   done)
        left=$(( START + CALL_S - 40 - $(date +%s) ))
        [ "$left" -gt 30 ] || break
        # shellcheck disable=SC2086
        timeout "$left" $PY -m wonderful_matrices.bench lm --data python-source --families $families --seeds "$seed" \
          --train-tokens "${TRAIN_TOKENS:-25000000}" --eval-contexts ${EVAL_CONTEXTS:-2048 8192 32768} \
          $([ "${COMPILED_TRAINING:-0}" = 1 ] && echo --compiled-training) \
          $([ "${GRAPHED_TRAINING:-0}" = 1 ] && echo --graphed-training) \
          ${HYBRID_RATIO:+--hybrid-ratio "$HYBRID_RATIO"} ${LR:+--lr "$LR"} --out "$RUNS" \
          >> "$WORK/lm-scale/run.log" 2>&1
        echo "seed $seed ($families): rc=$? after $(( $(date +%s) - START )) s" >> "$WORK/lm-scale/run.log"
      done
      ls "$RUNS"/*/results.json > /dev/null 2>&1 && $PY -m wonderful_matrices.bench lm --merge "$RUNS" \
        --out "$WORK/lm-scale" >> "$WORK/lm-scale/run.log" 2>&1 && cat "$WORK/lm-scale/results.md"
      tar czf "$OUT/lm-scale-state.tgz" -C "$RUNS" --exclude=checkpoint.pt --exclude='*.tmp' --exclude='*.bin' \
        --exclude='*.bin.size' .
      ;;
    position)
      bench position $(( CALL_S - 10 )) position --data "${DATA:-python-source}" \
        --variants "${VARIANTS:-no_pe,rope,conv,data}"
      ;;
    position+mqar)
      bench position $(( CALL_S - 10 )) position &
      for cell in 256:64 256:128 512:128 1024:128 2048:128 2048:256; do
        bench "mqar_${cell/:/_}" $(( CALL_S - 10 )) mqar --cells "$cell" --budget-s "${MQAR_BUDGET_S:-$(( CALL_S * 6 / 10 ))}" &
      done
      wait
      ;;
    mqar-grid)
      NGPU=$(nvidia-smi -L | wc -l)
      DEADLINE=$(( START + CALL_S - 30 ))
      export WORK DEADLINE PY NGPU STEPS=${STEPS:-3000} VOCAB=${VOCAB:-8192}
      i=0
      for cell in ${CELLS:-2048:256 2048:128 1024:128 512:128 256:128 256:64}; do
        for lr in ${LRS:-2.15e-3 1e-2 4.64e-4 1e-4}; do
          for mixer in ${MIXERS:-attn ssd dma}; do echo "$i $cell $mixer $lr"; i=$((i + 1)); done
        done
      done | xargs -P $(( NGPU * ${SLOTS:-1} )) -L 1 bash -c '
        left=$(( DEADLINE - $(date +%s) )); [ "$left" -gt 30 ] || exit 0
        dir="$WORK/job_$0"; mkdir -p "$dir"
        CUDA_VISIBLE_DEVICES=$(( $0 % NGPU )) timeout "$left" $PY -m wonderful_matrices.bench mqar --cells "$1" \
          --mixers "$2" --learning-rates "$3" --steps "$STEPS" --vocab-size "$VOCAB" --out "$dir" > "$dir/run.log" 2>&1
        echo "job $0 ($1 $2 lr $3): rc=$?" >> "$WORK/jobs.log"'
      cat "$WORK/jobs.log"
      parts=$(ls -d "$WORK"/job_*/ 2>/dev/null | while read -r d; do [ -f "$d/results.json" ] && echo "$d"; done)
      # shellcheck disable=SC2086
      [ -n "$parts" ] && $PY -m wonderful_matrices.bench mqar --merge $parts --out "$WORK/mqar" && cat "$WORK/mqar/results.md"
      ;;
    *) echo "unknown mode $MODE"; exit 2 ;;
  esac
  for log in "$WORK"/*/run.log; do
    n=25; case $log in *job_*) n=1 ;; esac
    echo "== $log"; grep -v Warning "$log" | tail -n $n
  done
} 2>&1 | tee "$OUT/summary.log"
tar czf "$OUT/claims.tgz" --exclude=cache -C "$WORK" .
