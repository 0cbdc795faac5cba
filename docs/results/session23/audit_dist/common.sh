W=/work/main/.venv/bin
export OMP_NUM_THREADS=1
COMMON="--seq-len 32 --lr 3e-3 --eval-interval 3 --eval-rows 8 --log-interval 1 --warmup 0.25 --device cpu --no-progress --threads 1"
tr1() { $W/wm train "$@" $COMMON; }
tr2() { $W/python -m torch.distributed.run --standalone --nproc-per-node 2 -m wonderful_matrices.cli train "$@" $COMMON; }
