# A diverging 2-rank run saves checkpoint-3 with NaN weights (its step-3 evaluation is already NaN), then stops at
# step 4 saying "checkpoints ... stop before the divergence"; wm eval gives nan, wm generate a traceback.
cd /tmp/dist_audit; . ./common.sh; rm -rf runs/div_save2
timeout 90 $W/python -m torch.distributed.run --standalone --nproc-per-node 2 -m wonderful_matrices.cli train --preset preset-cheems-tiny-nobal --data corpus.txt --out runs/div_save2 --max-steps 30 --batch-size 2 --save-interval 3 $COMMON --lr 30 --warmup 0 --clip 0 2>&1 | grep "validation\|wm train"
$W/python -c "
from safetensors.torch import load_file; import torch
w=load_file('runs/div_save2/checkpoint-3/model.safetensors'); print('non-finite tensors in checkpoint-3:', sum(not torch.isfinite(t).all() for t in w.values()), 'of', len(w))"
$W/wm eval runs/div_save2 --device cpu 2>&1 | tail -1
$W/wm generate runs/div_save2 --prompt "ROMEO:" --device cpu --max-new-tokens 5 2>&1 | tail -1
