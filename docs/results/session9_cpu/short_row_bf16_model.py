# The bf16 error a flash-style backward cannot avoid on test_dma_no_window_flex_cuda[3-7-8-2-64] (tests/ops/test_dma_cuda.py),
# in exact (float64) arithmetic: inputs and the upstream gradient rounded to the dtype, then also the output used
# for rowsum(dO * O) and dS rounded as the kernels store them. Argument: padded keys at the start (5 before the fix).
#   PYTHONPATH=src python docs/results/session9_cpu/short_row_bf16_model.py 5
import torch, wonderful_matrices as wm
import sys; sys.path.insert(0, "tests")
from cuda_helpers import _grads, _leaf, rel_err
torch.manual_seed(0)
lq, lk, hq, hkv, d = 3, 7, 8, 2, 64
base = [torch.randn(1, lq, hq, d), torch.randn(1, lk, hkv, d), torch.randn(1, lk, hkv, d), torch.randn(1, lk, hkv) * 3]
PAD = int(sys.argv[1]) if len(sys.argv) > 1 else 5; base[3][0, :PAD] = float("-inf"); base[3][0, lk // 2, 0] = float("-inf")
fn = lambda q, k, v, b: wm.ops.dynamic_mask_attention(q, k, v, b, backend="naive")
ref, rg = _grads(fn, [_leaf(t, torch.float64, "cpu") for t in base])
for dt in (torch.bfloat16, torch.float16):
    # exact arithmetic on inputs rounded to dt (and the upstream gradient rounded to dt, as _grads does)
    rounded = [t.to(dt).double() for t in base[:3]] + [base[3].double()]
    ins = [_leaf(t, torch.float64, "cpu") for t in rounded]
    out = fn(*ins)
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(dt).double()
    (out * w).sum().backward()
    print(dt, "input+upstream rounding only: out", f"{rel_err(out.detach(), ref):.2e}",
          *[f"{n} {rel_err(t.grad, r):.2e}" for n, t, r in zip("qkvb", ins, rg)])
print("ref dq norm", rg[0].norm().item(), "per query", rg[0][0].norm(dim=(-1,-2)))

# flash-style backward with the kernel's roundings: O stored in bf16 and used for delta = rowsum(dO * O)
def flash_dq(dt):
    q, k, v = [t.to(dt).double() for t in base[:3]]
    b = base[3].double()
    g = hq // hkv
    k = k.repeat_interleave(g, dim=2); v = v.repeat_interleave(g, dim=2); b = b.repeat_interleave(g, dim=2)
    scale = d ** -0.5
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale + b.permute(0, 2, 1)[:, :, None, :]
    causal = torch.arange(lk)[None, :] <= (torch.arange(lq)[:, None] + lk - lq)
    s = s.masked_fill(~causal, float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)
    o = torch.einsum("bhqk,bkhd->bqhd", p, v)
    gen = torch.Generator().manual_seed(1)
    do = torch.randn(o.shape, generator=gen, dtype=torch.float64).to(dt).double()
    o_r = o.to(dt).double()
    delta = (do * o_r).sum(-1).permute(0, 2, 1)[..., None]  # (b, h, q, 1)
    dp = torch.einsum("bqhd,bkhd->bhqk", do, v)
    ds = (p * (dp - delta)).to(dt).double()
    dq = torch.einsum("bhqk,bkhd->bqhd", ds, k) * scale
    return rel_err(o_r, ref), rel_err(dq, rg[0])
for dt in (torch.bfloat16, torch.float16):
    print(dt, "flash roundings (O in dt for delta, dS in dt): out %.2e dq %.2e" % flash_dq(dt))
