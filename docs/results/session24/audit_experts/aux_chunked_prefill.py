"""4. A training-mode call with labels and the default use_cache (config.use_cache=True) longer than
prefill_chunk_tokens runs its blocks chunk by chunk; each CDMoE layer's aux_loss is overwritten by every chunk, so
the model's aux_loss (and the loss) holds only the LAST chunk's balance loss instead of the whole call's."""
import os
import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
import wonderful_matrices as wm
from ref import balance_loss_reference

torch.manual_seed(0)
cfg = wm.presets.get("cheems-tiny", prefill_chunk_tokens=8, balance_loss_weight=0.5)
model = wm.CheemsForCausalLM(cfg).train()
x = torch.randint(0, cfg.vocab_size, (2, 20))

# capture each CDMoE layer's inputs to compute the balance loss of the whole call independently
inputs = {}
hooks = [blk.ffn.register_forward_pre_hook(
    lambda m, a, i=i: inputs.setdefault(i, []).append(a[0].detach().reshape(-1, a[0].shape[-1])))
    for i, blk in enumerate(model.model.layers)]

out_default = model(x, labels=x)                   # use_cache defaults to config.use_cache (True)
chunks_seen = {i: len(v) for i, v in inputs.items()}
inputs.clear()
out_nocache = model(x, labels=x, use_cache=False)  # one pass over all 20 tokens

# independent: weight * mean over layers of the balance loss over ALL tokens of the call
ref = 0.0
for i, blk in enumerate(model.model.layers):
    m = blk.ffn
    xs = inputs[i][0]
    with torch.no_grad():
        q = m.query(xs)
        _, ids = m.route(q)
        ref += m.balance_loss_weight * balance_loss_reference(q, m.keys, ids).item()
for h in hooks:
    h.remove()

ce_default = (out_default.loss - out_default.aux_loss).item()
ce_nocache = (out_nocache.loss - out_nocache.aux_loss).item()
print(f"CDMoE forward calls per layer with default use_cache: {chunks_seen}")
print(f"cross-entropy  default use_cache: {ce_default:.6f}   use_cache=False: {ce_nocache:.6f}")
print(f"aux_loss       default use_cache: {out_default.aux_loss.item():.6f}")
print(f"aux_loss       use_cache=False  : {out_nocache.aux_loss.item():.6f}")
print(f"aux_loss       independent ref over all 40 tokens: {ref:.6f}")
# the last chunk alone
last = 0.0
for i, blk in enumerate(model.model.layers):
    m = blk.ffn
    xs = inputs[i][0].reshape(2, 20, -1)[:, 16:].reshape(-1, xs.shape[-1])
    with torch.no_grad():
        q = m.query(xs)
        _, ids = m.route(q)
        last += m.balance_loss_weight * balance_loss_reference(q, m.keys, ids).item()
print(f"aux_loss       independent ref over the last chunk's tokens only (positions 16..19): {last:.6f}")
print("DEFECT" if abs(out_default.aux_loss.item() - ref) > 1e-4 else "ok")

# the same with the MoE layers of jamba-tiny (balance loss on the routed MoE)
cfg = wm.presets.get("jamba-tiny", prefill_chunk_tokens=8, balance_loss_weight=0.5)
model = wm.CheemsForCausalLM(cfg).train()
a = model(x, labels=x).aux_loss.item()
b = model(x, labels=x, use_cache=False).aux_loss.item()
print(f"jamba-tiny (MoE): aux_loss default use_cache {a:.6f}  vs use_cache=False {b:.6f}")
cfg = wm.presets.get("cheems-tiny", balance_loss_weight=0.5)  # the default prefill_chunk_tokens
print(f"cheems-tiny defaults: use_cache={cfg.use_cache}, prefill_chunk_tokens={cfg.prefill_chunk_tokens}: a training "
      f"call with labels on rows longer than {cfg.prefill_chunk_tokens} tokens takes the chunked path")
