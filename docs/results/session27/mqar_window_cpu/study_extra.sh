#!/usr/bin/env bash
# After study.sh: SSD of the same state bytes as a 16-key window (ssd-s16), 1200 steps, seed 0, same settings.
set -u
D=docs/results/session27/mqar_window_cpu
PY=${PY:-python}
LR=0.002154434690031882
mkdir -p "$D/ssd16_steps1200_seed0"
{
    date -u
    echo "OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH=src $PY -m wonderful_matrices.bench mqar --quick --cells 128:64 \
--mixers ssd-s16 --steps 1200 --learning-rates $LR --threads 1 --device cpu --seed 0 --out $D/ssd16_steps1200_seed0"
    time env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH=src $PY -m wonderful_matrices.bench mqar --quick \
        --cells 128:64 --mixers ssd-s16 --steps 1200 --learning-rates $LR --threads 1 --device cpu --seed 0 \
        --out "$D/ssd16_steps1200_seed0"
    date -u
} > "$D/ssd16_steps1200_seed0/run.log" 2>&1
