"""4. Balance loss: value and gradient vs the definition (product_key_balance_loss's docstring, written as loops),
disabled -> None, model output and loss composition, num_items_in_batch scaling, gradient checkpointing."""
import os
import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import warnings
warnings.filterwarnings("ignore")
import torch
import torch.nn.functional as F
import wonderful_matrices as wm
from ref import balance_loss_reference, rel_err
from wonderful_matrices.layers import CDMoE

torch.manual_seed(0)
problems = []

print("-- layer: value and gradient vs reference --")
for (T, H, N, k, dtype, tol) in ((5, 2, 36, 3, torch.float64, 1e-12), (70, 3, 25, 5, torch.float64, 1e-12),
                                 (130, 1, 16, 1, torch.float64, 1e-12), (9, 2, 36, 3, torch.float32, 1e-5),
                                 (200, 4, 49, 7, torch.float32, 1e-5)):
    m = CDMoE(12, 8, N, num_heads=H, top_k=k, retrieval_dim=6, balance_loss_weight=0.3).to(dtype).train()
    x = torch.randn(T, 12, dtype=dtype, requires_grad=True)
    m(x)
    aux = m.aux_loss
    params = [x, m.queries.weight, m.keys]
    got = torch.autograd.grad(aux, params)
    with torch.no_grad():
        _, ids = m.route(m.query(x))
    x64 = x.detach().double().requires_grad_()
    qw, K = m.queries.weight.detach().double().requires_grad_(), m.keys.detach().double().requires_grad_()
    q = (x64 @ qw.t()).unflatten(-1, (H, 2, 3))
    ref = 0.3 * balance_loss_reference(q, K, ids)
    refg = torch.autograd.grad(ref, [x64, qw, K])
    ev = abs(aux.item() - ref.item()) / abs(ref.item())
    eg = max(rel_err(a, b) for a, b in zip(got, refg))
    bad = ev > tol or eg > tol
    problems += [("layer", T, H, N, k, str(dtype))] if bad else []
    print(f"T={T:3d} H={H} N={N} k={k} {str(dtype)[6:]}: aux={aux.item():.6f} ref={ref.item():.6f} rel err value "
          f"{ev:.1e}, grads {eg:.1e} {'FAIL' if bad else 'ok'}")

m = CDMoE(12, 8, 36, num_heads=2, top_k=3, retrieval_dim=6, balance_loss_weight=0.0).train()
m(torch.randn(4, 12))
print("balance_loss_weight=0 -> aux_loss", m.aux_loss)
m = CDMoE(12, 8, 36, num_heads=2, top_k=3, retrieval_dim=6, balance_loss_weight=0.1).eval()
m(torch.randn(4, 12))
print("eval mode -> aux_loss", m.aux_loss)

print("\n-- model: aux_loss and loss composition --")
cfg = wm.presets.get("cheems-tiny", balance_loss_weight=0.25)
model = wm.CheemsForCausalLM(cfg).train()
x = torch.randint(0, cfg.vocab_size, (3, 11))
labels = x.clone()
labels[0, :3] = -100
inputs = {}
hooks = [blk.ffn.register_forward_pre_hook(lambda mod, a, i=i: inputs.__setitem__(i, a[0].detach()))
         for i, blk in enumerate(model.model.layers)]
out = model(x, labels=labels, use_cache=False, skip_logits=False)
for h in hooks:
    h.remove()
ref_aux = 0.0
for i, blk in enumerate(model.model.layers):
    f = blk.ffn
    xs = inputs[i].reshape(-1, cfg.hidden_size)
    with torch.no_grad():
        q = f.query(xs)
        ids = f.route(q)[1]
        ref_aux += 0.25 * balance_loss_reference(q, f.keys, ids).item()
logits = out.logits
ce = F.cross_entropy(logits[:, :-1].reshape(-1, cfg.vocab_size).double(), labels[:, 1:].reshape(-1), ignore_index=-100)
print(f"aux_loss {out.aux_loss.item():.6f} ref {ref_aux:.6f}; loss {out.loss.item():.6f} ref CE+aux "
      f"{ce.item() + ref_aux:.6f}")
if abs(out.aux_loss.item() - ref_aux) > 1e-5 or abs(out.loss.item() - ce.item() - ref_aux) > 1e-5:
    problems.append("model aux")
n_targets = int((labels[:, 1:] != -100).sum())
items = 3 * n_targets  # as if this were one of 3 equally sized micro-batches
out2 = model(x, labels=labels, use_cache=False, num_items_in_batch=torch.tensor(items))
ce_sum = F.cross_entropy(logits[:, :-1].reshape(-1, cfg.vocab_size).double(), labels[:, 1:].reshape(-1),
                         ignore_index=-100, reduction="sum")
expected = ce_sum.item() / items + ref_aux * n_targets / items
print(f"num_items_in_batch={items}: loss {out2.loss.item():.6f} expected CE_sum/items + aux*targets/items "
      f"{expected:.6f}")
if abs(out2.loss.item() - expected) > 1e-5:
    problems.append("num_items scaling")

cfg0 = wm.presets.get("cheems-tiny", balance_loss_weight=0.0)
m0 = wm.CheemsForCausalLM(cfg0).train()
o0 = m0(x, labels=labels, use_cache=False)
print("balance_loss_weight=0 model: aux_loss", o0.aux_loss)

print("\n-- gradient checkpointing (non-reentrant) vs none --")
for fused in (True, False):
    cfg = wm.presets.get("cheems-tiny", balance_loss_weight=0.25)
    model = wm.CheemsForCausalLM(cfg).train()
    x = torch.randint(0, cfg.vocab_size, (2, 13))
    o = model(x, labels=x, skip_logits=fused)
    o.loss.backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    aux_ref = o.aux_loss.item()
    model.zero_grad()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    o = model(x, labels=x, skip_logits=fused)
    o.loss.backward()
    errs = {n: rel_err(p.grad, ref[n]) for n, p in model.named_parameters() if n in ref}
    missing = set(ref) ^ {n for n, p in model.named_parameters() if p.grad is not None}
    worst = max(errs, key=errs.get)
    bitwise = all(torch.equal(p.grad, ref[n]) for n, p in model.named_parameters() if n in ref)
    print(f"fused_loss={fused}: aux {o.aux_loss.item():.6f} vs {aux_ref:.6f}; worst grad rel err {errs[worst]:.1e} "
          f"({worst}); bitwise equal: {bitwise}; params with/without grad differ: {missing or 'none'}")
    if errs[worst] > 1e-6 or missing:
        problems.append(("checkpointing", fused))
    # the aux loss alone must get the same gradients with checkpointing
    model.zero_grad()
    o = model(x, use_cache=False)
    sum(b.ffn.aux_loss for b in model.model.layers).backward()
    g_ck = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.gradient_checkpointing_disable()
    model.zero_grad()
    o = model(x, use_cache=False)
    sum(b.ffn.aux_loss for b in model.model.layers).backward()
    g_pl = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    e = max(rel_err(g_ck[n], g_pl[n]) for n in g_pl) if set(g_ck) == set(g_pl) else float("inf")
    print(f"  aux-loss-only gradients, checkpointed vs plain: worst rel err {e:.1e}, same params "
          f"{set(g_ck) == set(g_pl)}")
    if e > 1e-6:
        problems.append("aux-only ckpt")
print("\nPROBLEMS:", problems)
