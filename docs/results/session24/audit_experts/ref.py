"""Independent float64 references written from docs/design.md's CDMoE definition (not from the library's oracles)."""
import math

import torch
import torch.nn.functional as F

ACT = {"silu": F.silu, "gelu": F.gelu, "relu": F.relu}


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def all_scores(query, sub_keys):
    """query (T, H, 2, dk), sub_keys (H, 2, n, dk) -> (T, H, N) float64 with score[a*n+b] = q0.K0[a] + q1.K1[b]."""
    q = query.double()
    K = sub_keys.double()
    T, H = q.shape[0], q.shape[1]
    n = K.shape[2]
    s0 = torch.einsum("thd,hnd->thn", q[:, :, 0], K[:, 0])  # (T,H,n)
    s1 = torch.einsum("thd,hnd->thn", q[:, :, 1], K[:, 1])
    return (s0[..., :, None] + s1[..., None, :]).reshape(T, H, n * n)


def brute_topk(query, sub_keys, k):
    """Brute force over all N: returns scores (T,H,k) descending and ids (T,H,k); ties broken by smaller id."""
    S = all_scores(query, sub_keys)
    T, H, N = S.shape
    ids = torch.empty(T, H, k, dtype=torch.long)
    sc = torch.empty(T, H, k, dtype=torch.float64)
    for t in range(T):
        for h in range(H):
            order = sorted(range(N), key=lambda e: (-S[t, h, e].item(), e))[:k]
            ids[t, h] = torch.tensor(order)
            sc[t, h] = S[t, h, order]
    return sc, ids


def cdmoe_reference(x, gate_w, up_w, down_w, query_w, keys, down_t, up_t, k, activation="silu",
                    gate_b=None, up_b=None, down_b=None):
    """Definition, token by token, in float64 with plain python loops over heads and experts. Differentiable."""
    act = ACT[activation]
    x = x.double()
    shape = x.shape
    xf = x.reshape(-1, shape[-1])
    H, _, n, dk = keys.shape
    outs = []
    for t in range(xf.shape[0]):
        xt = xf[t]
        g = xt @ gate_w.double().t() + (0 if gate_b is None else gate_b.double())
        u = xt @ up_w.double().t() + (0 if up_b is None else up_b.double())
        shared = (act(g) * u) @ down_w.double().t() + (0 if down_b is None else down_b.double())
        q = (xt @ query_w.double().t()).view(H, 2, dk)
        private = torch.zeros_like(xt)
        for h in range(H):
            s0 = keys[h, 0].double() @ q[h, 0]
            s1 = keys[h, 1].double() @ q[h, 1]
            full = (s0[:, None] + s1[None, :]).reshape(-1)
            with torch.no_grad():
                order = sorted(range(n * n), key=lambda e: (-full[e].item(), e))[:k]
            sel = full[order]
            gates = torch.exp(sel - sel.max()) / torch.exp(sel - sel.max()).sum()
            for j, e in enumerate(order):
                private = private + gates[j] * act(down_t[e].double() @ xt) * up_t[e].double()
        outs.append(shared + private)
    return torch.stack(outs).reshape(shape)


def cdmoe_layer_reference(m, x):
    return cdmoe_reference(x, m.gate_proj.weight, m.up_proj.weight, m.down_proj.weight, m.queries.weight, m.keys,
                           m.down_embed.weight, m.up_embed.weight, m.top_k, m.activation,
                           m.gate_proj.bias, m.up_proj.bias, m.down_proj.bias)


def balance_loss_reference(query, keys, ids):
    """The docstring definition of product_key_balance_loss, loops: 1/(2H) sum_{h,c} n sum_a f[a] P[a]."""
    q = query.reshape(-1, *query.shape[-3:]).double()
    T, H = q.shape[0], q.shape[1]
    n = keys.shape[2]
    idsf = ids.reshape(T, H, -1)
    k = idsf.shape[-1]
    total = 0
    for h in range(H):
        for c in range(2):
            p = torch.softmax(q[:, h, c] @ keys[h, c].double().t(), -1).mean(0)  # (n,)
            sub = idsf[:, h] // n if c == 0 else idsf[:, h] % n
            f = torch.stack([(sub == a).sum().double() / (T * k) for a in range(n)])
            total = total + n * (f * p).sum()
    return total / (2 * H)
