"""Bad/mixed dtypes on the triton backend (TRITON_INTERPRET=1): a ValueError naming the argument, or a correct
result; never a deep error or a silently wrong result."""
import os
import sys, traceback, torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ref import ssd_ref, dma_ref, rel
import wonderful_matrices as wm
torch.manual_seed(0)
b, l, h, p, g, n = 1, 6, 2, 3, 1, 4
x = torch.randn(b, l, h, p); dt = torch.rand(b, l, h) + 0.1; A = -torch.rand(h) - 0.1
B = torch.randn(b, l, g, n); C = torch.randn(b, l, g, n); D = torch.randn(h)
want = ssd_ref(x, dt, A, B, C, D)[0]
def run(name, f, want):
    try:
        y = f()
        print(f"{name:40s} ran, rel err vs float64 ref {rel(y, want):.2e}")
    except ValueError as e:
        print(f"{name:40s} ValueError: {str(e)[:150]}")
    except Exception as e:
        tb = traceback.extract_tb(e.__traceback__)[-1]
        print(f"{name:40s} DEEP {type(e).__name__}: {str(e)[:150]!r} [at {tb.filename.split('site-packages/')[-1].split('src/')[-1]}:{tb.lineno}]")
run("ssd triton B,C float64", lambda: wm.ops.ssd(x, dt, A, B.double(), C.double(), D=D, backend="triton"), want)
run("ssd triton dt float64", lambda: wm.ops.ssd(x, dt.double(), A, B, C, D=D, backend="triton"), want)
run("ssd triton A,D float64", lambda: wm.ops.ssd(x, dt, A.double(), B, C, D=D.double(), backend="triton"), want)
run("ssd triton B,C bf16", lambda: wm.ops.ssd(x, dt, A, B.bfloat16(), C.bfloat16(), D=D, backend="triton"), ssd_ref(x, dt, A, B.bfloat16(), C.bfloat16(), D)[0])
run("ssd triton x float64", lambda: wm.ops.ssd(x.double(), dt, A, B, C, D=D, backend="triton"), want)
run("ssd triton non-contiguous x", lambda: wm.ops.ssd(x.transpose(2, 3).contiguous().transpose(2, 3), dt, A, B, C, D=D, backend="triton"), want)
run("ssd torch B,C float16", lambda: wm.ops.ssd(x, dt, A, B.half(), C.half(), D=D, backend="torch"), ssd_ref(x, dt, A, B.half(), C.half(), D)[0])
q = torch.randn(1, 9, 2, 8); k = torch.randn(1, 9, 1, 8); v = torch.randn(1, 9, 1, 8); bias = -torch.rand(1, 9, 1)
wd = dma_ref(q, k, v, bias, w=3)
run("dma triton bias float64", lambda: wm.ops.dynamic_mask_attention(q, k, v, bias.double(), keep_window=3, backend="triton"), wd)
run("dma triton bias bf16", lambda: wm.ops.dynamic_mask_attention(q, k, v, bias.bfloat16(), keep_window=3, backend="triton"), dma_ref(q, k, v, bias.bfloat16(), w=3))
run("dma triton q float64", lambda: wm.ops.dynamic_mask_attention(q.double(), k.double(), v.double(), bias, keep_window=3, backend="triton"), wd)
run("dma triton head_dim 300", lambda: wm.ops.dynamic_mask_attention(torch.randn(1, 9, 2, 300), torch.randn(1, 9, 1, 300), torch.randn(1, 9, 1, 300), bias, keep_window=3, backend="triton"), torch.zeros(1))
run("dma triton seq_idx int32", lambda: wm.ops.dynamic_mask_attention(q, k, v, bias, keep_window=3, backend="triton", seq_idx=torch.tensor([[0, 0, 0, 1, 1, 1, 1, 2, 2]], dtype=torch.int32)), dma_ref(q, k, v, bias, w=3, seq_idx=torch.tensor([[0, 0, 0, 1, 1, 1, 1, 2, 2]])))
run("dma triton non-contiguous q", lambda: wm.ops.dynamic_mask_attention(q.transpose(1, 2).contiguous().transpose(1, 2), k, v, bias, keep_window=3, backend="triton"), wd)
