"""Related to aux_chunked_prefill.py: in a training call longer than prefill_chunk_tokens with the default use_cache,
are the cross-entropy's parameter gradients those of the one-pass call? (balance loss off, to isolate the CE)"""
import os
import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
import wonderful_matrices as wm
from ref import rel_err
torch.manual_seed(0)
for name in ("cheems-tiny", "doge-tiny", "jamba-tiny"):
    cfg = wm.presets.get(name, prefill_chunk_tokens=8, balance_loss_weight=0.0)
    model = wm.CheemsForCausalLM(cfg).train()
    x = torch.randint(0, cfg.vocab_size, (2, 20))
    grads = []
    for kw in ({}, {"use_cache": False}):
        model.zero_grad()
        out = model(x, labels=x, **kw)
        out.loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    worst = max(grads[1], key=lambda n: rel_err(grads[0].get(n, torch.zeros_like(grads[1][n])), grads[1][n]))
    print(f"{name}: CE grads default use_cache (3 chunks) vs use_cache=False: worst rel err "
          f"{rel_err(grads[0].get(worst, torch.zeros(1)), grads[1][worst]):.1e} ({worst}); same params {set(grads[0]) == set(grads[1])}")
