"""Independent float64 references written from docs/design.md (no library code)."""
import math
import torch


def ssd_ref(x, dt, A, B, C, D=None, init=None, seq_idx=None):
    """Per-time-step recurrence. x (b,l,h,p), dt (b,l,h), A (h,), B,C (b,l,g,n)."""
    x, dt, A, B, C = (t.double() for t in (x, dt, A, B, C))
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    r = h // g
    S = torch.zeros(b, h, p, n, dtype=torch.float64) if init is None else init.double().clone()
    ys = []
    for t in range(l):
        if seq_idx is not None and t > 0:
            same = (seq_idx[:, t] == seq_idx[:, t - 1]).double()[:, None, None, None]
            S = S * same
        Bt = B[:, t].repeat_interleave(r, 1)  # (b,h,n)
        Ct = C[:, t].repeat_interleave(r, 1)
        S = torch.exp(dt[:, t] * A)[:, :, None, None] * S + (dt[:, t, :, None] * x[:, t])[..., None] * Bt[:, :, None, :]
        y = (S * Ct[:, :, None, :]).sum(-1)
        if D is not None:
            y = y + D.double()[None, :, None] * x[:, t]
        ys.append(y)
    return torch.stack(ys, 1), S


def rope_ref(M, angles):
    """rotate-half: M (..., n), angles (..., n/2) broadcastable."""
    n = M.shape[-1]
    h = n // 2
    x1, x2 = M[..., :h], M[..., h:]
    c, s = torch.cos(angles), torch.sin(angles)
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], -1)


def rope_freqs(n, theta=10000.0):
    return torch.tensor([theta ** (-2.0 * i / n) for i in range(n // 2)], dtype=torch.float64)


def dma_ref(q, k, v, bias, w=None, causal=True, scale=None, seq_idx=None):
    """Per-query loop: visible keys (causal bottom-right, own document, bias != -inf), keep exactly top-w by
    (bias, position) descending (ties to later key), softmax(q.k*scale + bias) @ v."""
    q, k, v, bias = q.double(), k.double(), v.double(), bias.double()
    b, lq, hq, d = q.shape
    lk, hkv = k.shape[1], k.shape[2]
    grp = hq // hkv
    scale = 1 / math.sqrt(d) if scale is None else scale
    out = torch.zeros(b, lq, hq, d, dtype=torch.float64)
    for bi in range(b):
        for hi in range(hq):
            kh = hi // grp
            for i in range(lq):
                pos = i + lk - lq
                keys = []
                for j in range(lk):
                    if causal and j > pos:
                        continue
                    if seq_idx is not None and seq_idx[bi, j] != seq_idx[bi, pos]:
                        continue
                    if bias[bi, j, kh].item() == float("-inf"):
                        continue
                    keys.append(j)
                keys.sort(key=lambda j: (bias[bi, j, kh].item(), j), reverse=True)
                if w is not None:
                    keys = keys[:w]
                if not keys:
                    continue
                idx = torch.tensor(sorted(keys))
                logit = k[bi, idx, kh] @ q[bi, i, hi] * scale + bias[bi, idx, kh]
                out[bi, i, hi] = torch.softmax(logit, 0) @ v[bi, idx, kh]
    return out


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()
