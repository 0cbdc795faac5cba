"""SSD with strong decay (dt·A ≈ -16 per step: cumulative log-decay of -256 within a chunk, exp(+256) overflows
float32) and tiny decay; forward, final state and gradients vs the float64 recurrence, every backend."""
import os
import sys, torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ref import ssd_ref, rel
import wonderful_matrices as wm
torch.manual_seed(0)
b, l, h, p, g, n = 1, 37, 2, 3, 1, 4
for label, dtscale, Aval in [("strong", 2.0, -8.0), ("mixed", 1.0, None), ("tiny", 1e-4, -1e-3)]:
    x = torch.randn(b, l, h, p, dtype=torch.float64)
    dt = (torch.rand(b, l, h, dtype=torch.float64) + 0.5) * dtscale
    if Aval is None:
        dt[:, ::3] = 30.0  # occasional huge steps (a reset-like decay)
        A = torch.tensor([-5.0, -0.01], dtype=torch.float64)
    else:
        A = torch.full((h,), Aval, dtype=torch.float64)
    B = torch.randn(b, l, g, n, dtype=torch.float64); C = torch.randn(b, l, g, n, dtype=torch.float64)
    init = torch.randn(b, h, p, n, dtype=torch.float64)
    ins = [x, dt, A, B, C, init]
    r = [t.clone().requires_grad_() for t in ins]
    yr, Sr = ssd_ref(r[0], r[1], r[2], r[3], r[4], None, r[5])
    gy = torch.randn_like(yr); gs = torch.randn_like(Sr)
    ((yr * gy).sum() + (Sr * gs).sum()).backward()
    for backend in ["naive", "torch", "triton"]:
        for dtype in ([torch.float32] if backend == "triton" else [torch.float32, torch.float64]):
            a = [t.clone().to(dtype).requires_grad_() for t in ins]
            try:
                y, S = wm.ops.ssd(a[0], a[1], a[2], a[3], a[4], chunk_size=16, initial_state=a[5],
                                  return_final_state=True, backend=backend)
                ((y.double() * gy).sum() + (S.double() * gs).sum()).backward()
                errs = [rel(y, yr), rel(S, Sr)] + [rel(t.grad, u.grad) for t, u in zip(a, r)]
                print(label, backend, str(dtype)[6:], "y S dx ddt dA dB dC dinit:", " ".join(f"{e:.1e}" for e in errs))
            except Exception as e:
                print(label, backend, dtype, "EXC", type(e).__name__, str(e)[:100])
