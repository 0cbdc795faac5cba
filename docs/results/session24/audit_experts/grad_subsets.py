"""3. expert_mixture backward with only some inputs requiring grad (every subset of x, gates, down, up), every
backend (triton under TRITON_INTERPRET=1, float32), vs float64 reference gradients."""
import os
os.environ["TRITON_INTERPRET"] = "1"
import itertools
import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
from ref import rel_err
from wonderful_matrices.ops import expert_mixture

torch.manual_seed(0)
T, H, k, N, d = 21, 2, 3, 11, 7
base = [torch.randn(T, d), torch.rand(T, H, k), torch.randn(N, d), torch.randn(N, d)]
ids = torch.randint(0, N, (T, H, k))
leaves = [t.double().requires_grad_() for t in base]
yr = expert_mixture(*leaves[:1], ids, *leaves[1:], "gelu", backend="naive")
gy = torch.randn_like(yr)
rg = torch.autograd.grad(yr, leaves, gy)
problems = []
for backend in ("torch", "dense", "triton"):
    for mask in itertools.product((False, True), repeat=4):
        if not any(mask):
            continue
        ts = [t.clone().requires_grad_(m) for t, m in zip(base, mask)]
        y = expert_mixture(ts[0], ids, ts[1], ts[2], ts[3], "gelu", backend=backend)
        want = [t for t, m in zip(ts, mask) if m]
        gs = torch.autograd.grad(y, want, gy.float())
        errs = [rel_err(g, r) for g, r, m in zip(gs, [r for r, m in zip(rg, mask) if m], mask)]
        bad = max(errs) > 1e-5
        problems += [(backend, mask)] if bad else []
        print(f"{backend:6s} requires_grad x/gates/down/up={mask}: max rel err {max(errs):.1e} {'FAIL' if bad else 'ok'}")
print("\nPROBLEMS:", problems)
