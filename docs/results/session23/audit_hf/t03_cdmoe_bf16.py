import torch, copy
from wonderful_matrices.layers import CDMoE
torch.manual_seed(0)
m = CDMoE(64, 128, 64, num_heads=2, top_k=4, retrieval_dim=16).eval()
# HF-like init of the linears (what _init_weights does: N(0, 0.02))
for l in (m.gate_proj, m.up_proj, m.down_proj, m.queries): torch.nn.init.normal_(l.weight, std=0.02)
x = torch.randn(2, 9, 64)
with torch.no_grad():
    ref = m(x); mb = copy.deepcopy(m).to(torch.bfloat16); out = mb(x.bfloat16()).float()
    print("layer rel err", ((out-ref).norm()/ref.norm()).item())
    q = m.query(x.reshape(-1,64)); g, ids = m.route(q)
    qb = mb.query(x.bfloat16().reshape(-1,64)); gb, idsb = mb.route(qb)
    print("ids differ frac", (torch.sort(ids,-1).values != torch.sort(idsb,-1).values).float().mean().item())
    print("gates maxdiff", (g.float() - gb.float()).abs().max().item())
    # private only
    sh = m.shared(x); shb = mb.shared(x.bfloat16()).float()
    print("shared rel", ((shb-sh).norm()/sh.norm()).item(), "shared norm", sh.norm().item(), "total norm", ref.norm().item())
    priv, privb = ref - sh, out - shb
    print("private rel", ((privb-priv).norm()/priv.norm()).item())
    # private path with fp32 ids but bf16 weights
    from wonderful_matrices.ops import expert_mixture
    flat = x.reshape(-1,64)
    p1 = expert_mixture(flat, ids, g, m.down_embed.weight, m.up_embed.weight)
    p2 = expert_mixture(flat.bfloat16(), ids, g.bfloat16() if g.dtype!=torch.float32 else g, m.down_embed.weight.bfloat16(), m.up_embed.weight.bfloat16()).float()
    print("mixture same ids rel", ((p2-p1).norm()/p1.norm()).item())
