"""1. product_key_topk with non-contiguous query / sub_keys (views), every backend (triton interpreted, float32)."""
import os
os.environ["TRITON_INTERPRET"] = "1"
import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
from ref import brute_topk
from wonderful_matrices.ops import product_key_topk
torch.manual_seed(0)
qbig = torch.randn(2, 9, 3, 2, 8)
q = qbig[1, :, :, :, ::2]            # (9, 3, 2, 4) strided in the last dim
kbig = torch.randn(3, 2, 4, 11)
K = kbig.transpose(-1, -2)[..., :6, :].transpose(-1, -2).contiguous().transpose(-1, -2).transpose(-1, -2)
K = torch.randn(3, 2, 4, 6).transpose(2, 3)  # (3, 2, 6, 4) non-contiguous
print("query contiguous", q.is_contiguous(), "sub_keys contiguous", K.is_contiguous())
rs, ri = brute_topk(q, K, 3)
for b in ("naive", "torch", "triton"):
    s, i = product_key_topk(q, K, 3, backend=b)
    print(b, "max |score err|", f"{(s.double() - rs).abs().max():.1e}", "ids equal", torch.equal(i, ri))
