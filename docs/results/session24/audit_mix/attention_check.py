"""Attention (Llama mixer) vs plain float64 causal softmax attention with RoPE written from DESIGN; left padding;
growing and static caches over chunks and steps; GQA; odd lengths."""
import os
import sys, math, torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ref import rel, rope_freqs, rope_ref, dma_ref
from wonderful_matrices.layers.attention import Attention, static_state
torch.manual_seed(0)
D, HQ, HKV, HD = 16, 6, 2, 10
def reference(m, x, pos, mask):
    W = {k: v.double() for k, v in m.state_dict().items()}
    b, l, _ = x.shape
    lin = lambda nm, t: t @ W[nm + ".weight"].T + (W[nm + ".bias"] if nm + ".bias" in W else 0)
    x = x.double()
    q = lin("q_proj", x).view(b, l, HQ, HD); k = lin("k_proj", x).view(b, l, HKV, HD); v = lin("v_proj", x).view(b, l, HKV, HD)
    ang = pos.double()[..., None] * rope_freqs(HD)
    q, k = rope_ref(q, ang[:, :, None]), rope_ref(k, ang[:, :, None])
    bias = torch.zeros(b, l, HKV, dtype=torch.float64).masked_fill(~mask.bool()[..., None], float("-inf"))
    return lin("o_proj", dma_ref(q, k, v, bias).reshape(b, l, HQ * HD))
m = Attention(D, HQ, HKV, HD, attention_bias=True).double()
with torch.no_grad():
    for p in m.parameters(): p.copy_(torch.randn_like(p) * 0.5)
b, l = 2, 13
x = torch.randn(b, l, D, dtype=torch.float64)
mask = torch.ones(b, l, dtype=torch.long); mask[1, :4] = 0
pos = (mask.cumsum(1) - 1).clamp_min(0)
ref = reference(m, x, pos, mask)
real = mask.bool()
print("no mask, row 0      ", f"{rel(m(x[:1], pos[:1]), ref[:1]):.2e}")
print("left padding        ", f"{rel(m(x, pos, mask)[real], ref[real]):.2e}")
for splits in ([5] + [1] * 8, [1] * 13, [3, 4, 1, 5]):
    for static in (False, True):
        for grad in (False, True):
            with torch.set_grad_enabled(grad):
                state = {"capacity": l} if static else {}
                outs, s0 = [], 0
                for n in splits:
                    outs.append(m(x[:, s0:s0 + n], pos[:, s0:s0 + n], mask[:, s0:s0 + n], state)); s0 += n
                o = torch.cat(outs, 1)
            print(f"cache static={static!s:5} grad={grad!s:5} splits={splits}", f"{rel(o[real], ref[real]):.2e}")
