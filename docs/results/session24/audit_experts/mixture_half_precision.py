"""8. expert_mixture in bf16/fp16 (CPU torch, dense, naive) vs float64 on the same rounded inputs, larger widths."""
import torch
from wonderful_matrices.ops import expert_mixture
import os, sys; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ref import rel_err
torch.manual_seed(0)
for d, M, N in ((64, 8, 64), (512, 32, 256), (2048, 32, 256)):
    T=16
    x = torch.randn(T, d); dn = torch.randn(N, d)/d**0.5; up = torch.randn(N, d)/d**0.5
    ids = torch.randint(0, N, (T, 4, M//4)); g = torch.rand(T, 4, M//4)
    for dtype in (torch.bfloat16, torch.float16):
        xs, dns, ups = x.to(dtype), dn.to(dtype), up.to(dtype)
        ref = expert_mixture(xs.double(), ids, g.double(), dns.double(), ups.double(), backend="torch")
        leaves = [t.double().requires_grad_() for t in (xs, g, dns, ups)]
        yr = expert_mixture(leaves[0], ids, leaves[1], leaves[2], leaves[3], backend="torch")
        gy = torch.randn_like(yr)
        rg = torch.autograd.grad(yr, leaves, gy)
        for b in ("torch", "dense", "naive"):
            ls = [t.clone().requires_grad_() for t in (xs, g, dns, ups)]
            y = expert_mixture(ls[0], ids, ls[1], ls[2], ls[3], backend=b)
            gs = torch.autograd.grad(y, ls, gy.to(dtype))
            print(d, M, str(dtype)[6:], b, "y %.1e" % rel_err(y, ref), "grads", ["%.1e" % rel_err(a, c) for a, c in zip(gs, rg)])
