"""8. (observation) product_key_topk's torch backend rounds each half's sub-key scores to bf16 before summing them
(two_stage.py: einsum in bf16, then .float()); the scores it returns (and CDMoE's softmax gates) carry bf16 rounding
although they are documented float32. Compared with exact float64 scoring of the SAME bf16 inputs."""
import os
import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
from ref import all_scores
from wonderful_matrices.ops import product_key_topk
torch.manual_seed(0)
T, H, n, dk, k = 4096, 2, 16, 32, 4
for scale in (1.0, 4.0):
    q = (scale * torch.randn(T, H, 2, dk) / dk ** 0.25).bfloat16()
    K = (torch.randn(H, 2, n, dk) / dk ** 0.25).bfloat16()
    S = all_scores(q, K)  # exact float64 scores of the bf16 inputs
    ex_s, ex_i = S.topk(k, -1)
    for b in ("torch", "naive"):
        s, i = product_key_topk(q, K, k, backend=b)
        true_of_ids = S.gather(-1, i)
        g = s.softmax(-1).double(); g_ex = ex_s.softmax(-1)
        print(f"scale {scale} {b:5s}: |score err| max {(s.double() - true_of_ids).abs().max():.2e} "
              f"(score std {S.std():.2f}); gates max abs err {(g - g_ex).abs().max():.2e}; "
              f"tokens*heads with a different expert set {(i.sort(-1).values != ex_i.sort(-1).values).any(-1).float().mean():.3%}")
    s32, i32 = product_key_topk(q.float(), K.float(), k, backend="torch")
    print(f"scale {scale} torch on the same inputs upcast to float32: |score err| max {(s32.double() - S.gather(-1, i32)).abs().max():.2e}, "
          f"different expert set {(i32.sort(-1).values != ex_i.sort(-1).values).any(-1).float().mean():.3%}")
