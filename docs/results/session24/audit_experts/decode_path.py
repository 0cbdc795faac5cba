"""5. The fused CDMoE decoding step (ops/cdmoe decode kernels, TRITON_INTERPRET=1, float32) vs the float64
reference and vs the layer's training path (autograd on) for the same tokens."""
import os
os.environ["TRITON_INTERPRET"] = "1"
import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
from ref import cdmoe_layer_reference, rel_err
from wonderful_matrices.layers import CDMoE
import wonderful_matrices.ops.cdmoe as cd

torch.manual_seed(0)
problems = []
calls = {"n": 0}
orig = cd._kernels.decode_step


def counting(*a, **k):
    calls["n"] += 1
    return orig(*a, **k)


cd._kernels.decode_step = counting

configs = [
    dict(hidden_size=12, intermediate_size=20, num_experts=36, num_heads=2, top_k=3, retrieval_dim=8),
    dict(hidden_size=19, intermediate_size=7, num_experts=25, num_heads=3, top_k=5, retrieval_dim=6,
         activation="gelu", bias=True),
    dict(hidden_size=9, intermediate_size=33, num_experts=324, num_heads=1, top_k=1, retrieval_dim=2,
         activation="relu"),
    dict(hidden_size=8, intermediate_size=6, num_experts=400, num_heads=2, top_k=17, retrieval_dim=10),
]
for cfg in configs:
    m = CDMoE(**cfg, backend="triton").eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    for shape in ((1, 1), (3,), (2, 8), (16,)):
        x = torch.randn(*shape, cfg["hidden_size"])
        before = calls["n"]
        with torch.no_grad():
            y_dec = m(x)
        used = calls["n"] > before
        y_train = m(x)  # autograd on: the general (training) path
        y_ref = cdmoe_layer_reference(m, x.double())
        e1, e2 = rel_err(y_dec, y_ref), rel_err(y_dec, y_train)
        bad = e1 > 2e-5 or e2 > 2e-5 or not used or y_dec.shape != x.shape
        if bad:
            problems.append((cfg.get("activation", "silu"), shape))
        print(f"act={cfg.get('activation','silu'):4s} N={cfg['num_experts']:3d} H={cfg['num_heads']} k={cfg['top_k']:2d} "
              f"tokens={shape!s:6s} decode kernels used={used}: rel err vs float64 ref {e1:.1e}, vs training path "
              f"{e2:.1e} {'FAIL' if bad else 'ok'}")
print("\nPROBLEMS:", problems)
