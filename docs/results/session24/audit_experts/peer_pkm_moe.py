"""7. PEER and PKM vs their definitions (float64 loops, brute-force top-k over all N), every backend incl. Triton
(interpreter, float32); MoE implementations (loop / grouped / gathered) vs a float64 loop reference + balance loss."""
import os
os.environ["TRITON_INTERPRET"] = "1"
import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
from ref import ACT, all_scores, rel_err
from wonderful_matrices.layers import PEER, PKM, MoE

torch.manual_seed(0)
problems = []


def pk_route(router, x):
    H, kd, k = router.num_heads, router.key_dim, router.top_k
    q = (x.double() @ router.queries.weight.double().t()).unflatten(-1, (H, 2, kd // 2))
    S = all_scores(q.reshape(-1, H, 2, kd // 2), router.keys)
    sc, ids = S.topk(k, -1)
    return sc.softmax(-1), ids  # (T, H, k)


def peer_ref(m, x):
    g, ids = pk_route(m.router, x)
    xf = x.double().reshape(-1, x.shape[-1])
    out = torch.zeros_like(xf)
    for t in range(xf.shape[0]):
        for h in range(ids.shape[1]):
            for j in range(ids.shape[2]):
                e = ids[t, h, j]
                out[t] += g[t, h, j] * ACT[m.activation](m.down_embed.weight[e].double() @ xf[t]) * \
                    m.up_embed.weight[e].double()
    return out.reshape(x.shape)


def pkm_ref(m, x):
    g, ids = pk_route(m.router, x)
    xf = x.double().reshape(-1, x.shape[-1])
    out = torch.zeros_like(xf)
    for t in range(xf.shape[0]):
        for h in range(ids.shape[1]):
            for j in range(ids.shape[2]):
                out[t] += g[t, h, j] * m.values.weight[ids[t, h, j]].double()
    return out.reshape(x.shape)


for cls, fn, kw in ((PEER, peer_ref, dict(activation="gelu")), (PEER, peer_ref, dict(activation="relu")),
                    (PKM, pkm_ref, {})):
    base = cls(10, 49, num_heads=3, top_k=4, key_dim=6, **kw).double()
    x = torch.randn(3, 5, 10, dtype=torch.float64)
    leaf = x.clone().requires_grad_()
    yr = fn(base, leaf)
    gy = torch.randn_like(yr)
    rg = torch.autograd.grad(yr, [leaf, *base.parameters()], gy)
    for backend, dtype, tol in (("torch", torch.float64, 1e-12), ("dense", torch.float64, 1e-12),
                                ("torch", torch.float32, 2e-5), ("dense", torch.float32, 2e-5),
                                ("triton", torch.float32, 2e-5)):
        m = cls(10, 49, num_heads=3, top_k=4, key_dim=6, backend=backend, **kw).to(dtype)
        m.load_state_dict(base.state_dict())
        leaf = x.to(dtype).clone().requires_grad_()
        y = m(leaf)
        gs = torch.autograd.grad(y, [leaf, *m.parameters()], gy.to(dtype))
        names = ["x"] + [n for n, _ in m.named_parameters()]
        errs = {"y": rel_err(y, yr), **{n: rel_err(a, b) for n, a, b in zip(names, gs, rg)}}
        worst = max(errs, key=errs.get)
        bad = errs[worst] > tol or y.dtype != dtype
        problems += [(cls.__name__, backend, str(dtype))] if bad else []
        print(f"{cls.__name__} {kw.get('activation', ''):4s} {backend:6s} {str(dtype)[6:]:7s}: max rel err "
              f"{errs[worst]:.1e} ({worst}) {'FAIL' if bad else 'ok'}")

print("\n-- MoE --")
for act in ("silu", "gelu"):
    base = MoE(10, 6, 5, 2, shared_intermediate_size=4, activation=act, balance_loss_weight=0.2).double()
    x = torch.randn(4, 7, 10, dtype=torch.float64)

    def moe_ref(m, x):
        xf = x.reshape(-1, 10)
        probs = torch.softmax(xf @ m.router.weight.t(), -1)
        out = []
        for t in range(xf.shape[0]):
            top = sorted(range(m.num_experts), key=lambda e: -probs[t, e].item())[:m.top_k]
            w = probs[t, top] / probs[t, top].sum()
            acc = m.shared_expert.down_proj(ACT[act](m.shared_expert.gate_proj(xf[t])) * m.shared_expert.up_proj(xf[t]))
            for j, e in enumerate(top):
                gu = m.gate_up_proj[e] @ xf[t]
                gate, up = gu[:m.intermediate_size], gu[m.intermediate_size:]
                acc = acc + w[j] * (m.down_proj[e] @ (ACT[act](gate) * up))
            out.append(acc)
        out = torch.stack(out).reshape(x.shape)
        # Switch loss E * sum_e f_e P_e, f over T*k selections
        E = m.num_experts
        sel = probs.topk(m.top_k, -1).indices
        f = torch.stack([(sel == e).sum().double() for e in range(E)]) / sel.numel()
        return out, m.balance_loss_weight * E * (f * probs.mean(0)).sum()

    leaf = x.clone().requires_grad_()
    yr, auxr = moe_ref(base, leaf)
    gy = torch.randn_like(yr)
    rg = torch.autograd.grad((yr * gy).sum() + auxr, [leaf, *base.parameters()])
    for impl in ("loop", "grouped"):
        m = MoE(10, 6, 5, 2, shared_intermediate_size=4, activation=act, balance_loss_weight=0.2,
                implementation=impl).double().train()
        m.load_state_dict(base.state_dict())
        leaf = x.clone().requires_grad_()
        y = m(leaf)
        gs = torch.autograd.grad((y * gy).sum() + m.aux_loss, [leaf, *m.parameters()])
        names = ["x"] + [n for n, _ in m.named_parameters()]
        errs = {"y": rel_err(y, yr), "aux": abs(m.aux_loss.item() - auxr.item()),
                **{n: rel_err(a, b) for n, a, b in zip(names, gs, rg)}}
        with torch.no_grad():
            y_nograd = m(x)  # the gathered path (no autograd)
        errs["y(no_grad gathered)"] = rel_err(y_nograd, yr)
        worst = max(errs, key=errs.get)
        bad = errs[worst] > 1e-12
        problems += [("MoE", impl, act)] if bad else []
        print(f"MoE {act} {impl:8s}: max err {errs[worst]:.1e} ({worst}) {'FAIL' if bad else 'ok'}")
print("\nPROBLEMS:", problems)
