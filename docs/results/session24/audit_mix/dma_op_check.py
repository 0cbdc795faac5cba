"""DMA op vs brute-force float64 per-query reference: windows, ties, padding, packing, GQA, lq<lk, grads."""
import os
import sys, torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ref import dma_ref, rel
import wonderful_matrices as wm

backends = sys.argv[1].split(",") if len(sys.argv) > 1 else ["naive", "torch"]
quick = len(sys.argv) > 2
torch.manual_seed(1)
tol = {"naive": 1e-9, "torch": 1e-9, "triton": 2e-4}

def make(b, lq, lk, hq, hkv, d, tie, pad, seq):
    q = torch.randn(b, lq, hq, d, dtype=torch.float64)
    k = torch.randn(b, lk, hkv, d, dtype=torch.float64)
    v = torch.randn(b, lk, hkv, d, dtype=torch.float64)
    if tie == "int":
        bias = torch.randint(-2, 1, (b, lk, hkv)).double()
    elif tie == "zero":
        bias = torch.zeros(b, lk, hkv, dtype=torch.float64)
    else:
        bias = -torch.rand(b, lk, hkv, dtype=torch.float64) * 3
    if pad:  # left padding on row 0
        bias[0, :pad] = float("-inf")
    seq_idx = None
    if seq:
        seq_idx = torch.sort(torch.randint(0, 3, (b, lk)), 1).values
    return q, k, v, bias, seq_idx

bad = 0
cases = []
for (b, lq, lk, hq, hkv, d) in [(1, 1, 1, 1, 1, 4), (2, 7, 7, 4, 2, 12), (1, 9, 13, 3, 1, 6), (2, 17, 17, 2, 2, 8), (1, 5, 20, 2, 1, 4), (1, 33, 33, 2, 1, 16)]:
    for w in [None, 1, 2, 3, lk, lk + 2]:
        for tie in ["rand", "int", "zero"]:
            for causal in [True, False]:
                for pad in [0, 2]:
                    for seq in [False, True]:
                        if seq and (lq != lk or not causal):
                            continue
                        if pad and lk <= 2:
                            continue
                        cases.append((b, lq, lk, hq, hkv, d, w, tie, causal, pad, seq))
import random
random.seed(0)
if quick:
    cases = [c for c in cases if c[8] and c[6] is not None and c[6] < c[2] and c[1] > 1]
    print("triton window cases", len(cases))
for backend in backends:
    for (b, lq, lk, hq, hkv, d, w, tie, causal, pad, seq) in cases:
        q, k, v, bias, seq_idx = make(b, lq, lk, hq, hkv, d, tie, pad, seq)
        dtype = torch.float32 if backend == "triton" else torch.float64
        ins_r = [t.clone().requires_grad_() for t in (q, k, v, bias)]
        ins_b = [t.clone().to(dtype).requires_grad_() for t in (q, k, v, bias)]
        try:
            o_r = dma_ref(*ins_r, w=w, causal=causal, seq_idx=seq_idx)
            o_b = wm.ops.dynamic_mask_attention(*ins_b, keep_window=w, causal=causal, seq_idx=seq_idx, backend=backend)
        except Exception as ex:
            print(backend, (b, lq, lk, hq, hkv, d, w, tie, causal, pad, seq), "EXC", type(ex).__name__, str(ex)[:200]); bad += 1; continue
        go = torch.randn_like(o_r)
        # padded queries that see nothing: keep them in the loss too (ref gives zeros)
        (o_r * go).sum().backward(); (o_b.double() * go).sum().backward()
        errs = {"o": rel(o_b, o_r)}
        for nm, a, r in zip("qkvb", ins_b, ins_r):
            ga, gr = a.grad, r.grad
            fin = torch.isfinite(r.detach())
            errs["d" + nm] = rel(torch.where(fin, ga, 0).nan_to_num(1e9), torch.where(fin, gr, 0)) if gr.norm() > 0 else (ga.nan_to_num(1e9).norm().item())
        m = max(errs.values())
        flag = "BAD" if m > tol[backend] else "ok"
        if flag == "BAD":
            bad += 1
        if flag == "BAD" or not quick:
            print(backend, (b, lq, lk, hq, hkv, d, w, tie, causal, pad, seq), flag, " ".join(f"{k}={v:.1e}" for k, v in errs.items()), flush=True)
print("cases", len(cases), "bad", bad)
