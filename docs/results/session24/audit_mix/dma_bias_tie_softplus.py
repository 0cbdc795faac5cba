"""DMA layer: keys whose dt_proj outputs are exactly equal must get exactly equal biases, so the window breaks the
tie toward the later key (DESIGN "ties go to the later key"; a constant bias = sliding-window attention). The layer
computes softplus in float32 on the CPU, where the vectorised body and the scalar tail of F.softplus round the same
input 1 ulp apart: keys tie or not depending on their index in the call, the full forward keeps the wrong keys, and
it disagrees with prefill+decode of the same layer."""
import os
import sys, torch
import torch.nn.functional as F
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ref import rel, dma_ref
from wonderful_matrices.layers import DynamicMaskAttention

print("F.softplus(full((2,23), 0.3)).unique() =", F.softplus(torch.full((2, 23), 0.3)).unique().tolist())
torch.manual_seed(0)
for dtype in (torch.float32, torch.float64):
    layer = DynamicMaskAttention(16, 4, 2, 6, keep_window=5)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        layer.dt_proj.weight.zero_()            # every key: dt_proj(v) = dt_proj.bias exactly -> tied biases
        layer.dt_proj.bias.copy_(torch.tensor([0.3, -0.2]))
    layer = layer.to(dtype)
    b, l = 2, 23
    x = torch.randn(b, l, 16, dtype=dtype)
    pos = torch.arange(l).expand(b, l)
    with torch.no_grad():
        q, k, v, bias = layer._project(x, pos, None)
        print(dtype, "head-0 bias values (should be one):", bias[..., 0].unique().tolist())
        full = layer(x, pos)
        tied = bias[:, :1].expand_as(bias)       # the exactly tied bias the definition gives
        want = layer.o_proj(dma_ref(q, k, v, tied, w=5).to(dtype).reshape(b, l, -1))
        state = {}
        dec = torch.cat([layer(x[:, i:i + 1], pos[:, i:i + 1], None, state) for i in range(l)], 1)
    print(f"  full forward vs sliding window (tie rule): rel err {rel(full, want):.3e}")
    print(f"  decode steps vs sliding window (tie rule): rel err {rel(dec, want):.3e}")
    print(f"  full forward vs decode steps:              rel err {rel(full, dec):.3e}")
