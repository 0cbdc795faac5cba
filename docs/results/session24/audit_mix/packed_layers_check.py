"""Packed documents at the layer level: a row holding documents [5, 1, 9, 4] (positions restarting, seq_idx) gives
each document exactly what it gets alone — SSD (every rope mode, conv on/off), DMA (windows), Attention; plus
gradients of the packed loss == sum of the per-document losses' gradients."""
import sys, os, torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ref import rel
from wonderful_matrices.layers import SSDMixer, DynamicMaskAttention
from wonderful_matrices.layers.attention import Attention
backend = sys.argv[1] if len(sys.argv) > 1 else "torch"
dtype = torch.float32 if backend == "triton" else torch.float64
tol = 5e-5 if dtype == torch.float32 else 1e-6
torch.manual_seed(0)
lens = [5, 1, 9, 4]
L = sum(lens)
seq = torch.cat([torch.full((n,), i) for i, n in enumerate(lens)])[None]
pos = torch.cat([torch.arange(n) for n in lens])[None]
def rnd(m):
    with torch.no_grad():
        for p_ in m.parameters():
            p_.copy_(torch.randn_like(p_) * 0.5)
    return m.to(dtype)
mods = []
for rope in ["fixed", "data", "none"]:
    for conv in [False, True]:
        mods.append((f"ssd rope={rope} conv={conv}", rnd(SSDMixer(16, 4, 3, 6, num_groups=2, chunk_size=4, rope=rope, use_conv=conv, conv_kernel=3, backend=backend))))
for w in [None, 1, 3]:
    mods.append((f"dma w={w}", rnd(DynamicMaskAttention(16, 4, 2, 6, keep_window=w))))
mods.append(("attention", rnd(Attention(16, 4, 2, 6))))
bad = 0
for name, m in mods:
    x = torch.randn(1, L, 16, dtype=dtype, requires_grad=True)
    packed = m(x, pos, None, None, seq_idx=seq)
    alone, s0 = [], 0
    xs = x.detach().clone().requires_grad_()
    for n in lens:
        alone.append(m(xs[:, s0:s0 + n], pos[:, s0:s0 + n])); s0 += n
    alone = torch.cat(alone, 1)
    g = torch.randn_like(packed)
    (packed * g).sum().backward(); (alone * g).sum().backward()
    e, eg = rel(packed, alone), rel(x.grad, xs.grad)
    flag = "ok" if max(e, eg) < tol else "BAD"
    bad += flag == "BAD"
    print(f"{backend} {name:28s} {flag} out {e:.1e} dx {eg:.1e}", flush=True)
print("bad", bad)
