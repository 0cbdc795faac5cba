"""DMA, backend="triton", TRITON_INTERPRET=1, float32. Bias = randn, with the first 4 keys set to the finite value
torch.finfo(float32).min (HF-style padding) instead of -inf. Shapes b=1, l=37, hq=2, hkv=1, d=8, seed 0.
Compared with the naive oracle in float64 and in float32."""
import os; os.environ["TRITON_INTERPRET"] = "1"
import warnings; warnings.filterwarnings("ignore")
import torch
from wonderful_matrices.ops import dynamic_mask_attention

torch.manual_seed(0)
b, l, hq, hkv, d = 1, 37, 2, 1, 8
q, k, v = torch.randn(b, l, hq, d), torch.randn(b, l, hkv, d), torch.randn(b, l, hkv, d)
bias = torch.randn(b, l, hkv) * 2
bias[:, :4] = torch.finfo(torch.float32).min
wgt = torch.randn(b, l, hq, d, dtype=torch.float64)

def go(backend, dtype, w):
    L = [t.to(dtype).clone().requires_grad_(True) for t in (q, k, v, bias)]
    o = dynamic_mask_attention(*L, keep_window=w, backend=backend)
    (o.double() * wgt).sum().backward()
    return [o.detach().double()] + [t.grad.double() for t in L]

def rel(a, r):
    return float("nan") if not torch.isfinite(a).all() else ((a - r).norm() / r.norm()).item()

for w in (3, 100):  # 3: windowed Triton kernels; 100 >= l: backend="triton" dispatches to the torch path
    tri, o64, o32 = go("triton", torch.float32, w), go("naive", torch.float64, w), go("naive", torch.float32, w)
    print(f"keep_window={w}")
    for n, a, r, r32 in zip(["out", "dq", "dk", "dv", "dbias"], tri, o64, o32):
        print(f"  {n:5s} rel err vs f64 oracle {rel(a, r):.2e}   vs f32 oracle {rel(a, r32):.2e}   (f32 oracle vs f64 {rel(r32, r):.1e})")
    err_q = (tri[0] - o64[0]).pow(2).sum((0, 2, 3)).sqrt()
    print("  queries with out error > 1e-3:", torch.nonzero(err_q > 1e-3).flatten().tolist())
    print("  triton out rows 0..4 (head 0):", tri[0][0, :5, 0, :3].tolist())
    print("  oracle out rows 0..4 (head 0):", o64[0][0, :5, 0, :3].tolist())
