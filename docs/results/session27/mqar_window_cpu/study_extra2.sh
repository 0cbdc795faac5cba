#!/usr/bin/env bash
# After study_extra.sh: DMA w=8, 4000 steps, seed 1 (does seed 0's above-chance far-key accuracy replicate?)
set -u
D=docs/results/session27/mqar_window_cpu
PY=${PY:-python}
LR=0.002154434690031882
mkdir -p "$D/w8_steps4000_seed1_dma"
{
    date -u
    echo "OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH=src $PY -m wonderful_matrices.bench mqar --quick --cells 128:64 \
--mixers dma-w8 --steps 4000 --learning-rates $LR --threads 1 --device cpu --seed 1 --out $D/w8_steps4000_seed1_dma"
    time env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH=src $PY -m wonderful_matrices.bench mqar --quick \
        --cells 128:64 --mixers dma-w8 --steps 4000 --learning-rates $LR --threads 1 --device cpu --seed 1 \
        --out "$D/w8_steps4000_seed1_dma"
    date -u
} > "$D/w8_steps4000_seed1_dma/run.log" 2>&1
