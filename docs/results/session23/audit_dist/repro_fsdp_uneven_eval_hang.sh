# --fsdp with validation rows that give the ranks different numbers of eval batches (5 rows, batch 2: rank 0 has
# rows 0,2,4 = 2 batches, rank 1 rows 1,3 = 1 batch) hangs at the first evaluation; DDP with the same flags finishes.
cd /tmp/dist_audit; W=/work/main/.venv/bin
for mode in ddp fsdp; do extra=""; [ $mode = fsdp ] && extra="--fsdp"; rm -rf runs/uneven_$mode; s=$(date +%s)
OMP_NUM_THREADS=1 timeout 60 $W/python -m torch.distributed.run --standalone --nproc-per-node 2 -m wonderful_matrices.cli train --preset preset-cheems-tiny-nobal --data corpus.txt --out runs/uneven_$mode --max-steps 2 --batch-size 2 --seq-len 32 --eval-rows 5 --eval-interval 1 --save-interval 2 --device cpu --no-progress --threads 1 $extra > runs/uneven_$mode.log 2>&1
echo "$mode rc=$? after $(( $(date +%s)-s )) s"; done
