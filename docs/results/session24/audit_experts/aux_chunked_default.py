"""aux_chunked_prefill.py at the shipped defaults (prefill_chunk_tokens=8192, use_cache=True): one training row of
8200 tokens with labels. The aux loss covers only the last 8 tokens (the second chunk)."""
import time
import torch
import wonderful_matrices as wm
torch.manual_seed(0)
cfg = wm.presets.get("cheems-tiny")
model = wm.CheemsForCausalLM(cfg).train()
x = torch.randint(0, cfg.vocab_size, (1, 8200))
t = time.time()
with torch.no_grad():
    a = model(x, labels=x).aux_loss.item()
    b = model(x, labels=x, use_cache=False).aux_loss.item()
print(f"balance_loss_weight={cfg.balance_loss_weight}, prefill_chunk_tokens={cfg.prefill_chunk_tokens}")
print(f"aux_loss default call {a:.6f}; use_cache=False {b:.6f}  ({time.time() - t:.0f} s)")
