"""8. autocast on CPU: the CDMoE error vs float32 comes from tokens whose experts flip; on same-routed tokens it is small."""
import os, sys, torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ref import rel_err
from wonderful_matrices.layers import CDMoE
torch.manual_seed(0)
cfg = dict(hidden_size=16, intermediate_size=24, num_experts=64, num_heads=2, top_k=4, retrieval_dim=8)
for backend in ("torch","dense"):
  for dtype in (torch.bfloat16, torch.float16):
    torch.manual_seed(1)
    m = CDMoE(**cfg, backend=backend)
    x = torch.randn(15, 16)
    with torch.autocast("cpu", dtype=dtype):
        y = m(x)
        ids_h = m.route(m.query(x.to(dtype)))[1]
    ids_f = m.route(m.query(x))[1]
    same = (ids_h.sort(-1).values == ids_f.sort(-1).values).all(-1).all(-1)
    yf = m(x)
    print(backend, dtype, "all", rel_err(y, yf), "same-routed", rel_err(y[same], yf[same]), int(same.sum()))
