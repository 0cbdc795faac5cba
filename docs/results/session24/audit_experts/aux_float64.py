"""(minor) In a float64 model the summed aux_loss is cast to float32 (modeling.py: torch.stack([a.float() ...])), so
loss = CE (float64) + aux (float32): the balance loss term is rounded to float32 precision in a float64 model."""
import os
import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
import wonderful_matrices as wm
torch.manual_seed(0)
cfg = wm.presets.get("cheems-tiny", balance_loss_weight=0.3)
model = wm.CheemsForCausalLM(cfg).double().train()
x = torch.randint(0, cfg.vocab_size, (2, 9))
out = model(x, labels=x, use_cache=False)
layer_sum = sum(b.ffn.aux_loss for b in model.model.layers)
print(f"layers' aux_loss dtype {model.model.layers[0].ffn.aux_loss.dtype}; out.aux_loss dtype {out.aux_loss.dtype}; "
      f"loss dtype {out.loss.dtype}")
print(f"|out.aux_loss - float64 sum of the layers' losses| = {abs(out.aux_loss.double() - layer_sum).item():.2e} "
      f"(relative {abs(out.aux_loss.double() - layer_sum).item() / layer_sum.item():.1e})")
