"""2./3. CDMoE layer forward + gradients of every parameter and the input vs an independent float64 reference
(docs/design.md's definition, python loops), for every backend; plus the library's own naive oracles vs the reference."""
import os
os.environ["TRITON_INTERPRET"] = "1"
import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
from ref import cdmoe_layer_reference, rel_err
from wonderful_matrices.layers import CDMoE
from wonderful_matrices.ops import expert_mixture, product_key_topk

torch.manual_seed(0)
problems = []


def run(m, x):
    leaf = x.clone().requires_grad_()
    y = m(leaf)
    g = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(y.dtype)
    grads = torch.autograd.grad(y, [leaf, *m.parameters()], g)
    return y, grads, g


configs = [
    dict(hidden_size=12, intermediate_size=20, num_experts=36, num_heads=2, top_k=3, retrieval_dim=8),
    dict(hidden_size=10, intermediate_size=7, num_experts=25, num_heads=3, top_k=5, retrieval_dim=6, activation="gelu",
         bias=True),
    dict(hidden_size=9, intermediate_size=5, num_experts=16, num_heads=1, top_k=1, retrieval_dim=2, activation="relu"),
    dict(hidden_size=8, intermediate_size=6, num_experts=4, num_heads=4, top_k=2, retrieval_dim=4),
]
shapes = [(2, 5), (1, 1), (7,), (1, 3)]

for cfg in configs:
    for shape in shapes:
        base = CDMoE(**cfg, backend="torch").double()
        with torch.no_grad():
            for p in base.parameters():
                p.add_(0.05 * torch.randn_like(p))
        x = torch.randn(*shape, cfg["hidden_size"], dtype=torch.float64)
        # reference
        leaf = x.clone().requires_grad_()
        yr = cdmoe_layer_reference(base, leaf)
        g = torch.randn(yr.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        ref_grads = torch.autograd.grad(yr, [leaf, *base.parameters()], g)
        names = ["x"] + [n for n, _ in base.named_parameters()]
        for backend, dtype, tol in (("torch", torch.float64, 1e-12), ("dense", torch.float64, 1e-12),
                                    ("torch", torch.float32, 2e-5), ("dense", torch.float32, 2e-5),
                                    ("triton", torch.float32, 2e-5), ("auto", torch.float32, 2e-5)):
            m = CDMoE(**cfg, backend=backend).to(dtype)
            m.load_state_dict(base.state_dict())
            leaf = x.to(dtype).clone().requires_grad_()
            y = m(leaf)
            grads = torch.autograd.grad(y, [leaf, *m.parameters()], g.to(dtype))
            errs = {"y": rel_err(y, yr)}
            for n, a, b in zip(names, grads, ref_grads):
                errs[n] = rel_err(a, b)
            worst = max(errs, key=errs.get)
            bad = errs[worst] > tol or y.dtype != dtype
            if bad:
                problems.append((cfg.get("activation", "silu"), shape, backend, str(dtype), worst, errs[worst]))
            print(f"act={cfg.get('activation','silu'):4s} bias={cfg.get('bias', False)!s:5s} N={cfg['num_experts']:2d} "
                  f"H={cfg['num_heads']} k={cfg['top_k']} shape={shape!s:7s} {backend:6s} {str(dtype)[6:]:7s} "
                  f"y.dtype={str(y.dtype)[6:]:7s} max rel err {errs[worst]:.1e} ({worst}) {'FAIL' if bad else 'ok'}")

print("\n-- the library's oracles (naive top-k + naive mixture) vs the independent reference --")
m = CDMoE(**configs[1]).double()
x = torch.randn(3, 4, 10, dtype=torch.float64)
q = m.queries(x).unflatten(-1, (3, 2, 3))
sc, ids = product_key_topk(q, m.keys, 5, backend="naive")
priv = expert_mixture(x, ids, sc.softmax(-1), m.down_embed.weight, m.up_embed.weight, "gelu", backend="naive")
shared = m.down_proj(torch.nn.functional.gelu(m.gate_proj(x)) * m.up_proj(x))
e = rel_err(shared + priv, cdmoe_layer_reference(m, x))
print(f"library oracle vs reference: rel err {e:.1e} {'ok' if e < 1e-12 else 'FAIL'}")
if e > 1e-12:
    problems.append("oracle")
print("\nPROBLEMS:", problems)
