# repro_bad_flags.sh: wm train under torchrun (2 procs) with bad inputs; for each: rc, seconds, lines of output, tracebacks,
# "wm train: error" lines; the outputs are in runs/bad_<case>.log
cd /tmp/dist_audit; W=/work/main/.venv/bin
base="--preset cheems-tiny --data corpus.txt --max-steps 2 --batch-size 2 --seq-len 32 --no-progress --threads 1"
run() { name=$1; shift; rm -rf runs/bad_$name; s=$(date +%s)
  OMP_NUM_THREADS=1 timeout 100 $W/python -m torch.distributed.run --standalone --nproc-per-node 2 -m wonderful_matrices.cli train "$@" > runs/bad_$name.log 2>&1
  echo "$name: rc=$? $(( $(date +%s)-s ))s lines=$(wc -l < runs/bad_$name.log) tracebacks=$(grep -c Traceback runs/bad_$name.log) errlines=$(grep -c 'wm train: error' runs/bad_$name.log) out_exists=$([ -e runs/bad_$name ] && echo yes || echo no)"; }
run argparse_type --out runs/bad_argparse_type $base --max-steps abc
run unknown_flag --out runs/bad_unknown_flag $base --bogus 1
run max_steps0 --out runs/bad_max_steps0 $base --max-steps 0
run cuda --out runs/bad_cuda $base --device cuda
run preset --out runs/bad_preset $base --preset nope
run data --out runs/bad_data $base --data /nonexistent.txt
run seqlen --out runs/bad_seqlen $base --seq-len 100000
run cudagraph --out runs/bad_cudagraph $base --cuda-graph --device cpu
