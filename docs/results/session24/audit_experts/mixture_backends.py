"""3. expert_mixture: every backend vs an independent float64 loop reference, outputs and gradients (x, gates, down,
up), with experts selected by several heads of one token and duplicate ids within a head, int32 ids, non-contiguous
inputs, a 1-D x; plus weighted_rows (the PKM read)."""
import os
os.environ["TRITON_INTERPRET"] = "1"
import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
from ref import ACT, rel_err
from wonderful_matrices.ops import expert_mixture
from wonderful_matrices.ops.expert_mixture import weighted_rows

torch.manual_seed(0)
problems = []


def reference(x, ids, gates, down, up, act):
    x, gates, down, up = x.double(), gates.double(), down.double(), up.double()
    d = x.shape[-1]
    xf = x.reshape(-1, d)
    idsf = ids.reshape(xf.shape[0], -1)
    gf = gates.reshape(xf.shape[0], -1)
    out = []
    for t in range(xf.shape[0]):
        acc = torch.zeros(d, dtype=torch.float64)
        for j in range(idsf.shape[1]):
            e = int(idsf[t, j])
            acc = acc + gf[t, j] * ACT[act](down[e] @ xf[t]) * up[e]
        out.append(acc)
    return torch.stack(out).reshape(x.shape)


def case(name, lead, H, k, N, d, act, ids_fn, backends, id_dtype=torch.int64, noncontig=False):
    x = torch.randn(*lead, d, dtype=torch.float64)
    down = torch.randn(N, d, dtype=torch.float64)
    up = torch.randn(N, d, dtype=torch.float64)
    gates = torch.rand(*lead, H, k, dtype=torch.float64) + 0.1
    ids = ids_fn(lead, H, k, N)
    leaves = [t.clone().requires_grad_() for t in (x, gates, down, up)]
    yr = reference(leaves[0], ids, leaves[1], leaves[2], leaves[3], act)
    gy = torch.randn_like(yr)
    rg = torch.autograd.grad(yr, leaves, gy)
    for backend, dtype, tol in backends:
        ls = [t.to(dtype).clone().requires_grad_() for t in (x, gates, down, up)]
        args = ls
        if noncontig:
            args = [(t.detach().transpose(0, -1).contiguous().transpose(0, -1)).requires_grad_() if t.dim() > 1 else t
                    for t in ls]
            ls = args
        y = expert_mixture(args[0], ids.to(id_dtype), args[1], args[2], args[3], act, backend=backend)
        gs = torch.autograd.grad(y, ls, gy.to(dtype))
        errs = {"y": rel_err(y, yr)}
        for n, a, b in zip(("x", "gates", "down", "up"), gs, rg):
            errs[n] = rel_err(a, b)
        worst = max(errs, key=errs.get)
        bad = errs[worst] > tol or y.dtype != dtype
        if bad:
            problems.append((name, backend, str(dtype), worst, errs[worst]))
        print(f"{name:38s} {backend:6s} {str(dtype)[6:]:7s} max rel err {errs[worst]:.1e} ({worst}) "
              f"{'FAIL' if bad else 'ok'}")


def random_ids(lead, H, k, N):
    return torch.randint(0, N, (*lead, H, k))


def same_across_heads(lead, H, k, N):
    one = torch.stack([torch.randperm(N)[:k] for _ in range(int(torch.tensor(lead).prod()))]).reshape(*lead, 1, k)
    return one.expand(*lead, H, k).contiguous()


def all_same(lead, H, k, N):
    return torch.full((*lead, H, k), N - 1)


B64 = [("naive", torch.float64, 1e-12), ("torch", torch.float64, 1e-12), ("dense", torch.float64, 1e-12)]
B32 = [("torch", torch.float32, 1e-5), ("dense", torch.float32, 1e-5), ("triton", torch.float32, 1e-5)]
for act in ("silu", "gelu", "relu"):
    case(f"random dup ids {act}", (3, 5), 2, 3, 7, 6, act, random_ids, B64 + B32)
    case(f"same ids every head {act}", (5,), 3, 4, 9, 5, act, same_across_heads, B64 + B32)
    case(f"one expert for all {act}", (4,), 2, 3, 5, 4, act, all_same, B64 + B32)
case("int32 ids", (11,), 2, 2, 9, 5, "silu", random_ids, B64 + B32, id_dtype=torch.int32)
case("non-contiguous", (4, 3), 2, 2, 9, 5, "silu", random_ids, B64 + B32, noncontig=True)
case("1-D x", (), 2, 3, 9, 5, "silu", random_ids, B64 + B32)
case("T=1", (1,), 1, 1, 1, 3, "silu", random_ids, B64 + B32)
case("many tokens (>block)", (67,), 2, 4, 40, 33, "silu", random_ids, B64 + B32)

print("\n-- weighted_rows (PKM read) --")
for backend, dtype, tol in (("torch", torch.float64, 1e-12), ("dense", torch.float64, 1e-12),
                            ("torch", torch.float32, 1e-5), ("dense", torch.float32, 1e-5),
                            ("triton", torch.float32, 1e-5)):
    T, M, N, d = 13, 6, 8, 5
    w = torch.randn(T, M, dtype=torch.float64)
    ids = torch.randint(0, N, (T, M))
    table = torch.randn(N, d, dtype=torch.float64)
    w1, t1 = w.clone().requires_grad_(), table.clone().requires_grad_()
    yr = torch.stack([sum(w1[t, j] * t1[ids[t, j]] for j in range(M)) for t in range(T)])
    gy = torch.randn_like(yr)
    rg = torch.autograd.grad(yr, [w1, t1], gy)
    w2, t2 = w.to(dtype).requires_grad_(), table.to(dtype).requires_grad_()
    y = weighted_rows(w2, ids, t2, backend)
    gs = torch.autograd.grad(y, [w2, t2], gy.to(dtype))
    e = max(rel_err(y, yr), rel_err(gs[0], rg[0]), rel_err(gs[1], rg[1]))
    bad = e > tol
    if bad:
        problems.append(("weighted_rows", backend))
    print(f"weighted_rows {backend:6s} {str(dtype)[6:]:7s} max rel err {e:.1e} {'FAIL' if bad else 'ok'}")
print("\nPROBLEMS:", problems)
