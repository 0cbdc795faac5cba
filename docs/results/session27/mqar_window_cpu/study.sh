#!/usr/bin/env bash
# The session-27 bounded-window MQAR study (issue #15, item 2(b)), run from the repository root, runs in sequence.
# Cell T = 128, 8 kv pairs, width 64, the --quick settings, lr 2.15e-3 (LEARNING_RATES[2]), one CPU thread.
set -u
D=docs/results/session27/mqar_window_cpu
PY=${PY:-python}
LR=0.002154434690031882
one() {  # one(folder, mixers, steps, seed)
    local cmd="OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH=src $PY -m wonderful_matrices.bench mqar --quick \
--cells 128:64 --mixers $2 --steps $3 --learning-rates $LR --threads 1 --device cpu --seed $4 --out $D/$1"
    mkdir -p "$D/$1"
    {
        date -u
        echo "$cmd"
        time env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH=src $PY -m wonderful_matrices.bench mqar --quick \
            --cells 128:64 --mixers "$2" --steps "$3" --learning-rates $LR --threads 1 --device cpu --seed "$4" \
            --out "$D/$1"
        date -u
    } > "$D/$1/run.log" 2>&1
}
one w16_steps1200_seed0 dma-w16,swa-w16 1200 0
one w16_steps1200_seed1 dma-w16,swa-w16 1200 1
one w16_steps1200_seed2 dma-w16,swa-w16 1200 2
one w16_steps4000_seed0 dma-w16,swa-w16 4000 0
one w16_steps4000_seed1 dma-w16,swa-w16 4000 1
one w8_steps4000_seed0 dma-w8,swa-w8 4000 0
