"""1./3. Triton variants under TRITON_INTERPRET=1 (float32): product-key forward "insertion" and "bitonic", backward
"reduced" and "atomic", sub-key tables above BITONIC_MAX_KEYS / SMALL_TABLE_KEYS (64); the Triton mixture with gates of
other float dtypes and token counts that cross block boundaries."""
import os
os.environ["TRITON_INTERPRET"] = "1"
import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
from ref import all_scores, brute_topk, rel_err
from wonderful_matrices.ops import product_key_topk, expert_mixture
from wonderful_matrices.ops.product_key import topk_kernels as tk

torch.manual_seed(0)
problems = []
for fwd in ("insertion", "bitonic"):
    for bwd in ("reduced", "atomic"):
        for (T, H, n, dk, k) in ((19, 2, 7, 3, 7), (35, 1, 70, 2, 5), (17, 3, 33, 5, 1)):
            q = torch.randn(T, H, 2, dk, requires_grad=True)
            K = torch.randn(H, 2, n, dk, requires_grad=True)
            with tk.kinds(forward=fwd, small_table_backward=bwd):
                sc, ids = product_key_topk(q, K, k, backend="triton")
                g = torch.randn_like(sc)
                gq, gK = torch.autograd.grad(sc, [q, K], g)
            rs, ri = brute_topk(q.detach(), K.detach(), k)
            q64, K64 = q.detach().double().requires_grad_(), K.detach().double().requires_grad_()
            S = all_scores(q64, K64)
            rq, rK = torch.autograd.grad(S.gather(-1, ids), [q64, K64], g.double())
            e = max((sc.double() - rs).abs().max().item() / rs.abs().max().item(), rel_err(gq, rq), rel_err(gK, rK))
            ids_ok = torch.equal(ids, ri)
            bad = e > 1e-5 or not ids_ok
            problems += [(fwd, bwd, T, n, k)] if bad else []
            print(f"fwd={fwd:9s} bwd={bwd:7s} T={T} H={H} n={n} dk={dk} k={k}: max err {e:.1e}, ids == brute force "
                  f"{ids_ok} {'FAIL' if bad else 'ok'}")

print("\n-- Triton mixture: gate dtypes, block-crossing sizes --")
for gdtype in (torch.float32, torch.float64, torch.bfloat16):
    for (T, H, k, N, d) in ((37, 2, 5, 50, 70), (1, 1, 1, 1, 1), (130, 4, 8, 16, 9)):
        x = torch.randn(T, d, requires_grad=True)
        dn = torch.randn(N, d, requires_grad=True)
        up = torch.randn(N, d, requires_grad=True)
        gates = torch.rand(T, H, k).to(gdtype).requires_grad_()
        ids = torch.randint(0, N, (T, H, k))
        y = expert_mixture(x, ids, gates, dn, up, "silu", backend="triton")
        gy = torch.randn_like(y)
        gs = torch.autograd.grad(y, [x, gates, dn, up], gy)
        leaves = [t.detach().double().requires_grad_() for t in (x, gates, dn, up)]
        yr = expert_mixture(leaves[0], ids, leaves[1], leaves[2], leaves[3], "silu", backend="naive")
        rg = torch.autograd.grad(yr, leaves, gy.double())
        errs = [rel_err(y, yr)] + [rel_err(a, b) for a, b in zip(gs, rg)]
        tol = 1e-5 if gdtype != torch.bfloat16 else 1e-2
        bad = max(errs) > tol or gs[1].dtype != gdtype
        problems += [("mix", str(gdtype), T)] if bad else []
        print(f"gates {str(gdtype)[6:]:8s} T={T} H={H} k={k} N={N} d={d}: errs y/x/gates/down/up "
              f"{' '.join(f'{v:.1e}' for v in errs)}, grad_gates dtype {str(gs[1].dtype)[6:]} {'FAIL' if bad else 'ok'}")
print("\nPROBLEMS:", problems)
