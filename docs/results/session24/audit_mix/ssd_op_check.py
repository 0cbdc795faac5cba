"""SSD op vs independent float64 recurrence: all backends, odd shapes, D, initial_state, seq_idx, grads."""
import os, sys, itertools, torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ref import ssd_ref, rel
import wonderful_matrices as wm

torch.manual_seed(0)
backends = sys.argv[1].split(",") if len(sys.argv) > 1 else ["naive", "torch"]

def case(b, l, h, p, g, n, chunk, use_D, use_init, use_seq, backend):
    dtype = torch.float32 if backend == "triton" else torch.float64
    x = torch.randn(b, l, h, p, dtype=torch.float64)
    dt = torch.rand(b, l, h, dtype=torch.float64) * 0.5 + 0.05
    A = -torch.rand(h, dtype=torch.float64) * 2 - 0.1
    B = torch.randn(b, l, g, n, dtype=torch.float64)
    C = torch.randn(b, l, g, n, dtype=torch.float64)
    D = torch.randn(h, dtype=torch.float64) if use_D else None
    init = torch.randn(b, h, p, n, dtype=torch.float64) if use_init else None
    seq = None
    if use_seq:
        seq = torch.sort(torch.randint(0, 3, (b, l)), dim=1).values
    ins = [x, dt, A, B, C] + ([D] if use_D else []) + ([init] if use_init else [])
    ins_r = [t.clone().requires_grad_() for t in ins]
    ins_b = [t.clone().to(dtype).requires_grad_() for t in ins]
    def unpack(ts):
        it = iter(ts)
        xx, dd, AA, BB, CC = [next(it) for _ in range(5)]
        DD = next(it) if use_D else None
        II = next(it) if use_init else None
        return xx, dd, AA, BB, CC, DD, II
    xx, dd, AA, BB, CC, DD, II = unpack(ins_r)
    yr, Sr = ssd_ref(xx, dd, AA, BB, CC, DD, II, seq)
    xx, dd, AA, BB, CC, DD, II = unpack(ins_b)
    yb, Sb = wm.ops.ssd(xx, dd, AA, BB, CC, chunk_size=chunk, D=DD, initial_state=II, return_final_state=True,
                        seq_idx=seq, backend=backend)
    gy = torch.randn_like(yr); gS = torch.randn_like(Sr)
    (yr * gy).sum().backward(); ((Sr * gS).sum()).backward() if False else None
    loss_r = None
    # recompute with both outputs in the loss
    ins_r2 = [t.detach().clone().requires_grad_() for t in ins_r]
    xx, dd, AA, BB, CC, DD, II = unpack(ins_r2)
    yr, Sr = ssd_ref(xx, dd, AA, BB, CC, DD, II, seq)
    ((yr * gy).sum() + (Sr * gS).sum()).backward()
    ((yb.double() * gy).sum() + (Sb.double() * gS).sum()).backward()
    names = ["x", "dt", "A", "B", "C"] + (["D"] if use_D else []) + (["init"] if use_init else [])
    errs = {"y": rel(yb, yr), "S": rel(Sb, Sr)}
    for nm, a, r in zip(names, ins_b, ins_r2):
        errs["d" + nm] = rel(a.grad, r.grad)
    return errs

tol = {"naive": 1e-9, "torch": 1e-9, "triton": 1e-4}
bad = 0
shapes = [(1, 1, 1, 1, 1, 1, 4), (2, 5, 2, 3, 1, 4, 4), (1, 7, 4, 12, 2, 6, 8), (2, 9, 3, 5, 3, 8, 8),
          (1, 17, 2, 4, 1, 4, 16), (2, 15, 4, 2, 2, 4, 16), (1, 33, 2, 3, 2, 2, 16)]
for backend in backends:
    for shp in shapes:
        for use_D, use_init, use_seq in [(True, False, False), (False, True, False), (True, True, True), (True, False, True)]:
            try:
                e = case(*shp, use_D, use_init, use_seq, backend)
            except Exception as ex:
                print(backend, shp, use_D, use_init, use_seq, "EXC", type(ex).__name__, str(ex)[:200]); bad += 1; continue
            m = max(e.values())
            flag = "BAD" if m > tol[backend] else "ok"
            if flag == "BAD": bad += 1
            print(backend, shp, "D" if use_D else "-", "I" if use_init else "-", "S" if use_seq else "-", flag,
                  " ".join(f"{k}={v:.1e}" for k, v in e.items()))
print("bad", bad)
