"""1. Product-key top-k vs an independent float64 brute force over all N = n^2 experts, every backend."""
import os
os.environ["TRITON_INTERPRET"] = "1"
import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import itertools
import torch
from ref import all_scores, brute_topk, rel_err
from wonderful_matrices.ops import product_key_topk

torch.manual_seed(0)
problems = []


def check(name, q, K, k, backend, exact_ids=True):
    sc, ids = product_key_topk(q, K, k, backend=backend)
    T = q.reshape(-1, *q.shape[-3:]).shape[0]
    H = K.shape[0]
    qf = q.reshape(T, H, 2, -1)
    ref_sc, ref_ids = brute_topk(qf, K, k)
    S = all_scores(qf, K)
    got_sc = sc.reshape(T, H, k).double()
    got_ids = ids.reshape(T, H, k)
    tol = 1e-12 if q.dtype == torch.float64 else 1e-5
    # scores: descending, equal to brute force
    ok_desc = bool((got_sc[..., 1:] <= got_sc[..., :-1] + 1e-12).all())
    err_sc = (got_sc - ref_sc).abs().max().item() / max(ref_sc.abs().max().item(), 1)
    # ids: the score of every returned id must equal its returned score; distinct; in range
    sc_of_ids = S.gather(-1, got_ids)
    err_ids = (sc_of_ids - got_sc).abs().max().item() / max(ref_sc.abs().max().item(), 1)
    distinct = all(len(set(got_ids[t, h].tolist())) == k for t in range(T) for h in range(H))
    same_ids = bool((got_ids == ref_ids).all())
    bad = not (ok_desc and err_sc < tol and err_ids < tol and distinct)
    if bad:
        problems.append(name)
    print(f"{name:60s} desc={ok_desc} err_scores={err_sc:.1e} err_score_of_ids={err_ids:.1e} distinct={distinct} "
          f"ids==bruteforce(smaller-id tie)={same_ids} {'FAIL' if bad else 'ok'}")
    return sc, ids


cases = []
for (lead, H, n, dk, k) in [((7,), 1, 5, 3, 1), ((7,), 3, 5, 3, 5), ((2, 3), 2, 7, 4, 4), ((1,), 2, 1, 1, 1),
                            ((9,), 1, 2, 1, 2), ((5,), 4, 6, 2, 3), ((3,), 2, 17, 5, 9), ((1, 1), 1, 3, 2, 3),
                            ((33,), 2, 20, 3, 7)]:
    cases.append((lead, H, n, dk, k))

for lead, H, n, dk, k in cases:
    for dtype, backends in ((torch.float64, ("naive", "torch")), (torch.float32, ("naive", "torch", "triton"))):
        q = torch.randn(*lead, H, 2, dk, dtype=dtype)
        K = torch.randn(H, 2, n, dk, dtype=dtype)
        for b in backends:
            check(f"lead={lead} H={H} n={n} dk={dk} k={k} {str(dtype)[6:]} {b}", q, K, k, b)

print("\n-- exact ties (integer-valued scores) --")
for b, dtype in (("naive", torch.float64), ("torch", torch.float64), ("triton", torch.float32)):
    q = torch.randint(-1, 2, (11, 2, 2, 2)).to(dtype)
    K = torch.randint(-1, 2, (2, 2, 4, 2)).to(dtype)
    for k in (1, 3, 4):
        check(f"ties k={k} {b}", q, K, k, b)
    # all-zero queries: every expert ties
    check(f"all tie k=4 {b}", torch.zeros(3, 2, 2, 2, dtype=dtype), K, 4, b)

print("\n-- k > n, k = 0, bool k --")
q = torch.randn(4, 2, 2, 3)
K = torch.randn(2, 2, 3, 3)
for b in ("naive", "torch", "triton"):
    for k in (4, 9, 0, True):
        try:
            product_key_topk(q, K, k, backend=b)
            print(f"k={k!r} {b}: no error"); problems.append(f"k={k} {b} accepted")
        except ValueError as e:
            print(f"k={k!r} {b}: ValueError: {e}")

print("\n-- gradients (query, sub_keys) vs float64 brute force of the selected scores --")
for b, dtype, tol in (("naive", torch.float64, 1e-12), ("torch", torch.float64, 1e-12), ("triton", torch.float32, 1e-5),
                      ("torch", torch.float32, 1e-5)):
    for (T, H, n, dk, k) in ((7, 3, 5, 3, 4), (17, 2, 9, 4, 9), (1, 1, 3, 2, 1)):
        q = torch.randn(T, H, 2, dk, dtype=dtype, requires_grad=True)
        K = torch.randn(H, 2, n, dk, dtype=dtype, requires_grad=True)
        sc, ids = product_key_topk(q, K, k, backend=b)
        g = torch.randn_like(sc.double())
        gq, gK = torch.autograd.grad(sc, [q, K], g.to(sc.dtype))
        q64 = q.detach().double().requires_grad_()
        K64 = K.detach().double().requires_grad_()
        S = all_scores(q64, K64)
        ref = S.gather(-1, ids)
        rq, rK = torch.autograd.grad(ref, [q64, K64], g)
        e1, e2 = rel_err(gq, rq), rel_err(gK, rK)
        bad = e1 > tol or e2 > tol
        if bad:
            problems.append(f"grad {b}")
        print(f"grad {b:6s} {str(dtype)[6:]} T={T} H={H} n={n} k={k}: rel_err dq={e1:.1e} dK={e2:.1e} "
              f"{'FAIL' if bad else 'ok'}")

print("\nPROBLEMS:", problems)
