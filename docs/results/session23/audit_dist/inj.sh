# inj.sh WHAT RANK STEP OUT  -> 2-process DDP run with a fault injected; prints rc, time and the output
cd /tmp/dist_audit; W=/work/main/.venv/bin
rm -rf runs/$4
start=$(date +%s)
INJECT=$1 INJECT_RANK=$2 INJECT_STEP=$3 OMP_NUM_THREADS=1 timeout ${T:-150} $W/python -m torch.distributed.run --standalone --nproc-per-node 2 inject.py train \
  --preset preset-cheems-tiny-nobal --data corpus.txt --out runs/$4 --max-steps 8 --batch-size 2 --save-interval 2 \
  --seq-len 32 --lr 3e-3 --eval-interval 3 --eval-rows 8 --log-interval 1 --warmup 0.25 --device cpu --no-progress --threads 1 > runs/$4.log 2>&1
echo "rc=$? after $(( $(date +%s) - start )) s; lines=$(wc -l < runs/$4.log); tracebacks=$(grep -c Traceback runs/$4.log)"
