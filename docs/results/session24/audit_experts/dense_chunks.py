"""3. The dense backend with its token chunking forced (DENSE_BUDGET lowered so chunks hold 1..5 tokens), duplicate ids,
float64 and bfloat16 tables, vs the float64 loop reference (outputs and all gradients); also weighted_rows."""
import os
import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
from ref import rel_err
from wonderful_matrices.ops import expert_mixture
from wonderful_matrices.ops.expert_mixture import dense, weighted_rows
torch.manual_seed(0)
T, H, k, N, d = 23, 3, 4, 6, 5
x, g, dn, up = torch.randn(T, d), torch.rand(T, H, k), torch.randn(N, d), torch.randn(N, d)
ids = torch.randint(0, N, (T, H, k))
leaves = [t.double().requires_grad_() for t in (x, g, dn, up)]
yr = expert_mixture(leaves[0], ids, *leaves[1:], "silu", backend="naive")
gy = torch.randn_like(yr)
rg = torch.autograd.grad(yr, leaves, gy)
saved = dense.DENSE_BUDGET
for tokens in (1, 2, 5, 1000):
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        dense.DENSE_BUDGET = tokens * dense.token_bytes(N, dtype)
        chunks = len(dense.token_chunks(T, dense.token_bytes(N, dtype)))
        ls = [t.to(dtype).requires_grad_() for t in (x, dn, up)]
        gg = g.to(torch.float64 if dtype == torch.float64 else torch.float32).requires_grad_()  # float32 gates with half tables
        y = expert_mixture(ls[0], ids, gg, ls[1], ls[2], "silu", backend="dense")
        gs = torch.autograd.grad(y, [ls[0], gg, ls[1], ls[2]], gy.to(dtype))
        errs = [rel_err(y, yr)] + [rel_err(a, b) for a, b in zip(gs, rg)]
        print(f"chunks of <= {tokens:4d} tokens ({chunks:2d} chunks) {str(dtype)[6:]:8s}: errs y/x/gates/down/up "
              f"{' '.join(f'{e:.1e}' for e in errs)} {'ok' if max(errs) < tol else 'FAIL'}")
dense.DENSE_BUDGET = saved
