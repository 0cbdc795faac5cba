# --out below a file: one process prints a one-line error; under torchrun the job hangs (timeout 60 s).
cd /tmp/dist_audit; W=/work/main/.venv/bin
OMP_NUM_THREADS=1 $W/wm train --preset cheems-tiny --data corpus.txt --out /tmp/dist_audit/corpus.txt/run --max-steps 2 --batch-size 2 --seq-len 32 --device cpu --no-progress --threads 1; echo "1 process: rc=$?"
s=$(date +%s); OMP_NUM_THREADS=1 timeout 60 $W/python -m torch.distributed.run --standalone --nproc-per-node 2 -m wonderful_matrices.cli train --preset cheems-tiny --data corpus.txt --out /tmp/dist_audit/corpus.txt/run --max-steps 2 --batch-size 2 --seq-len 32 --device cpu --no-progress --threads 1 > runs/bad_out_under_file.log 2>&1; echo "torchrun: rc=$? after $(( $(date +%s)-s )) s (124 = killed by timeout)"
