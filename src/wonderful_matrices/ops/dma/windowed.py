"""Dynamic mask attention with SDPA: exact, and O(L·w) with a window (the ``"torch"`` backend).

Both paths fold the bias into the keys, so one scaled-dot-product-attention call applies it: with
``q' = [q, 1, 1, 0…]`` and ``k' = [k, hi, lo, 0…]`` where ``hi + lo = bias / scale`` (``hi`` the bias rounded to
the key dtype, ``lo`` the rounding error, so half-precision keys carry the bias to ~16 bits),
``scale · q'·k' = scale · q·k + bias``. The head dim is padded to a multiple of 8 for the fused kernels.

* No window (or a window >= the key length): SDPA over all keys with a causal flag (bottom-right aligned; an
  explicit ``(lq, lk)`` boolean mask only when ``lq < lk``). No ``(b, h, lq, lk)`` tensor is built; memory is
  that of the SDPA kernel SDPA picks (O(L) for flash / memory-efficient / cuDNN on GPU). Keys with bias
  ``-inf`` get a bias of ``-1e30`` (finite, so no ``0·inf`` in the backward) and queries that see no
  attendable key output zeros.
* Window ``w``, causal: queries are processed in blocks of ``B`` (docs/design.md, fact 1). The candidates of a
  block ``[p0, p1)`` are the top ``w`` keys ``< p0`` by rank ``(bias, position)`` (ties to the later key) plus
  the block's own keys; the kept queries of each candidate form an interval ``[start, end)`` inside the
  block. The selection (no gradient, :func:`select_blocks`) computes them for all blocks at once from one
  global sort by rank and the running ``w``-th best rank (a fixed number of tensor operations, no loop over
  blocks; on CUDA the selection kernels of selection_kernels.py); the attention then gathers the ``w + B``
  candidate keys/values of each block and runs SDPA with the interval mask, several blocks per call. Time
  O(L·(w+B)·d), memory O(b·h·L·(w+B)/B·d) for the gathered keys/values plus O(b·h_kv·L·(w+B)) bits of mask —
  never ``(b, h, lq, lk)``. Gradients reach ``q``, ``k``, ``v`` and ``bias`` through the gathers.
* Window ``w``, not causal: every query keeps the same top-``w`` keys; one gather, one SDPA call.
* Packed documents (``seq_idx``, causal): without a window, SDPA with a ``(b, 1, l, l)`` boolean mask of
  "same document, not in the future" (O(l²) bits, the only such tensor); with a
  window, the selection ranks keys per document and cuts each key's query interval at its document's end
  (:func:`select_blocks`), and the attention is unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..triton_utils import opaque_to_compile
from .selection import default_block, rank_order, select_blocks

MASKED_BIAS = -1e30
MASK_ELEMENTS_PER_CALL = 1 << 26  # boolean mask elements of one SDPA call of the windowed causal path


def _compute_dtype(q: torch.Tensor) -> torch.dtype:
    # float16 cannot hold bias / scale for large biases: compute it in float32.
    return torch.float32 if q.dtype == torch.float16 else q.dtype


def _augment(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float,
             masked_bias: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q (..., d), k/v (..., d), bias k.shape[:-1] -> q', k', v' with head dim d' = roundup(d + 2, 8).

    ``scale · q'·k' = scale · q·k + bias`` (non-finite biases replaced by ``masked_bias``); ``v'`` is ``v``
    zero-padded to ``d'``.
    """
    dtype = _compute_dtype(q)
    d = q.shape[-1]
    pad = -(-(d + 2) // 8) * 8 - d - 2
    exact = torch.float64 if dtype == torch.float64 else torch.float32
    t = bias.to(exact)
    t = torch.where(torch.isfinite(t), t, torch.full_like(t, masked_bias)) / scale
    hi = t.to(dtype)
    lo = (t - hi.to(exact)).to(dtype)
    qa = q.to(dtype)
    ones = qa.new_ones(qa.shape[:-1] + (2,))
    q_aug = torch.cat([qa, ones, qa.new_zeros(qa.shape[:-1] + (pad,))], dim=-1)
    ka = k.to(dtype)
    k_aug = torch.cat([ka, hi[..., None], lo[..., None], ka.new_zeros(ka.shape[:-1] + (pad,))], dim=-1)
    v_aug = F.pad(v.to(dtype), (0, pad + 2))
    return q_aug, k_aug, v_aug


def _single_query(q, k, v, bias, scale: float) -> torch.Tensor:
    """One query per (batch, head) over all keys (a decoding step): q (b,1,hq,d), k/v (b,n,hkv,d) (any strides,
    e.g. a prefix view of a preallocated cache), bias (b,n,hkv) -> (b,1,hq,d).

    Logits and softmax in float32 (float64 for float64 inputs), so the bias keeps its precision; the keys and
    values of the cache are read once (one conversion copy each), no augmented copy, no mask tensor, no host
    synchronisation. The query heads of a KV group are the rows of one matrix product.
    """
    b, _, hq, d = q.shape
    n, hkv = k.shape[1], k.shape[2]
    work = torch.float64 if torch.float64 in (q.dtype, k.dtype, bias.dtype) else torch.float32
    qg = q.reshape(b, hkv, hq // hkv, d).to(work)
    kf = k.permute(0, 2, 1, 3).to(work, memory_format=torch.contiguous_format)  # (b, hkv, n, d)
    vf = v.permute(0, 2, 1, 3).to(work, memory_format=torch.contiguous_format)
    logits = torch.baddbmm(bias.permute(0, 2, 1).reshape(b * hkv, 1, n).to(work), qg.reshape(b * hkv, -1, d),
                           kf.reshape(b * hkv, n, d).transpose(1, 2), alpha=scale)
    out = torch.bmm(torch.softmax(logits, dim=-1), vf.reshape(b * hkv, n, d)).view(b, hkv, -1, d)
    # All keys -inf (padding / empty slots only): softmax gives NaN; such a query outputs zeros.
    attendable = (bias > float("-inf")).any(dim=1)  # (b, hkv)
    out = torch.where(attendable[:, :, None, None], out, out.new_zeros(()))
    return out.reshape(b, 1, hq, d).to(q.dtype)


def attendable_queries(bias: torch.Tensor, lq: int, seq_idx: torch.Tensor | None = None) -> torch.Tensor:
    """Causal: whether each of the ``lq`` queries (the last ``lq`` key positions) sees a key with a finite bias,
    among its document's keys when ``seq_idx (b, l)`` is given. bias (b, lk, hkv) -> (b, lq, hkv) bool; O(lk).

    Scans run along the last (contiguous) dimension: a scan along ``lk`` in the ``(b, lk, hkv)`` layout is one
    thread per ``(b, hkv)`` column on CUDA (3 ms at 16K tokens in session 12's profile, as long as the attention).
    """
    if seq_idx is not None:
        return _attendable_in_documents(bias, seq_idx)
    lk = bias.shape[1]
    positions = torch.arange(lk, device=bias.device)
    first = torch.where(torch.isfinite(bias).transpose(1, 2), positions, lk).amin(-1)  # (b, hkv): first finite key
    return first[:, None, :] <= positions[lk - lq:][None, :, None]


def _attendable_in_documents_fake(bias: torch.Tensor, seq_idx: torch.Tensor) -> torch.Tensor:
    return bias.new_empty(bias.shape, dtype=torch.bool)


@opaque_to_compile("attendable_in_documents", _attendable_in_documents_fake)
def _attendable_in_documents(bias: torch.Tensor, seq_idx: torch.Tensor) -> torch.Tensor:
    """:func:`attendable_queries` of packed rows (``lq == lk``): bias (b, l, hkv), seq_idx (b, l) -> (b, l, hkv)
    bool. An operator of its own under ``torch.compile``: Inductor (torch 2.11, CUDA) fused the ``isfinite`` into
    the scan below and failed to generate its code at cheems-base's shapes (docs/results.md, session 19)."""
    b, lk, hkv = bias.shape
    finite = torch.isfinite(bias).transpose(1, 2)  # (b, hkv, lk)
    # finite keys in [document start, query] = seen[query] - seen[start - 1]
    seen = finite.to(torch.int32).cumsum(-1)
    doc_first = torch.searchsorted(seq_idx.contiguous(), seq_idx.contiguous())  # (b, l)
    before_doc = seen.gather(-1, doc_first[:, None, :].expand(b, hkv, lk)) - finite.gather(
        -1, doc_first[:, None, :].expand(b, hkv, lk)).to(torch.int32)
    return (seen > before_doc).transpose(1, 2).contiguous()  # the layout the fake promises


def _dense(q, k, v, bias, causal: bool, scale: float, seq_idx: torch.Tensor | None = None) -> torch.Tensor:
    """All visible keys; q (b,lq,hq,d), k/v (b,lk,hkv,d), bias (b,lk,hkv) -> (b,lq,hq,d).

    ``seq_idx (b, l)`` (causal, ``lq == lk``): a ``(b, 1, l, l)`` boolean mask keeps each query in its document.
    """
    b, lq, hq, d = q.shape
    if seq_idx is not None:
        return _dense_documents(q, k, v, bias, scale, seq_idx)
    if lq == 1:  # the only query sits at the last key position (causal or not, it sees every key)
        return _single_query(q, k, v, bias, scale)
    lk, hkv = k.shape[1], k.shape[2]
    group = hq // hkv
    qa, ka, va = _augment(q, k, v, bias, scale, MASKED_BIAS)
    # (b, hkv, group, lq, d') queries against (b, hkv, 1, lk, d') keys: batch dims broadcast over the group.
    qa = qa.view(b, lq, hkv, group, -1).permute(0, 2, 3, 1, 4).reshape(b * hkv, group, lq, -1)
    ka = ka.permute(0, 2, 1, 3).reshape(b * hkv, 1, lk, -1).expand(-1, group, -1, -1)
    va = va.permute(0, 2, 1, 3).reshape(b * hkv, 1, lk, -1).expand(-1, group, -1, -1)
    offset = lk - lq
    mask, is_causal = None, False
    if causal and offset == 0:
        is_causal = True
    elif causal and lq > 1:
        mask = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(diagonal=offset)
    out = F.scaled_dot_product_attention(qa, ka, va, attn_mask=mask, is_causal=is_causal, scale=scale)
    out = out[..., :d].reshape(b, hkv, group, lq, d).permute(0, 3, 1, 2, 4).reshape(b, lq, hq, d)
    # A query whose visible keys all have bias -inf outputs zeros.
    if causal:
        attendable = attendable_queries(bias, lq)
    else:
        attendable = torch.isfinite(bias).any(dim=1)[:, None, :].expand(b, lq, hkv)
    attendable = attendable.repeat_interleave(group, dim=2)[..., None]
    return torch.where(attendable, out, out.new_zeros(())).to(q.dtype)


def _dense_documents(q, k, v, bias, scale: float, seq_idx: torch.Tensor) -> torch.Tensor:
    """Causal attention inside each document of a packed row: q (b,l,hq,d), k/v (b,l,hkv,d), bias (b,l,hkv),
    seq_idx (b,l) -> (b,l,hq,d)."""
    b, l, hq, d = q.shape
    hkv = k.shape[2]
    group = hq // hkv
    qa, ka, va = _augment(q, k, v, bias, scale, MASKED_BIAS)
    qa = qa.view(b, l, hkv, group, -1).permute(0, 2, 3, 1, 4).reshape(b * hkv, group, l, -1)
    ka = ka.permute(0, 2, 1, 3).reshape(b * hkv, 1, l, -1).expand(-1, group, -1, -1)
    va = va.permute(0, 2, 1, 3).reshape(b * hkv, 1, l, -1).expand(-1, group, -1, -1)
    same = (seq_idx[:, :, None] == seq_idx[:, None, :]).tril()  # (b, l, l): key j <= query i, same document
    mask = same[:, None].expand(b, hkv, l, l).reshape(b * hkv, 1, l, l)
    out = F.scaled_dot_product_attention(qa, ka, va, attn_mask=mask, scale=scale)
    out = out[..., :d].reshape(b, hkv, group, l, d).permute(0, 3, 1, 2, 4).reshape(b, l, hq, d)
    attendable = attendable_queries(bias, l, seq_idx).repeat_interleave(group, dim=2)[..., None]
    return torch.where(attendable, out, out.new_zeros(())).to(q.dtype)


def _windowed_causal(q, k, v, bias, keep_window: int, scale: float, block: int,
                     seq_idx: torch.Tensor | None = None) -> torch.Tensor:
    b, lq, hq, d = q.shape
    lk, hkv = k.shape[1], k.shape[2]
    group = hq // hkv
    n = b * hkv
    rows = bias.permute(0, 2, 1).reshape(n, lk)
    documents = None if seq_idx is None else seq_idx[:, None, :].expand(b, hkv, lk).reshape(n, lk)
    candidates, start, end = select_blocks(rows, lq, keep_window, block, documents)
    nb, width = candidates.shape[1], candidates.shape[2]
    qa, ka, va = _augment(q, k, v, bias, scale, 0.0)  # non-finite keys are never kept: any finite value
    dp = qa.shape[-1]
    ka = ka.reshape(b * lk * hkv, dp)
    va = va.reshape(b * lk * hkv, dp)
    # Flat row of candidate (batch bi, head h, key j) in the (b, lk, hkv) tables, laid out (b, nb, hkv, W).
    heads = torch.arange(hkv, device=q.device)
    batches = torch.arange(b, device=q.device)
    flat = (candidates.view(b, hkv, nb, width) * hkv + heads[None, :, None, None]
            + (batches * lk * hkv)[:, None, None, None]).permute(0, 2, 1, 3)
    masks = (start.view(b, hkv, nb, width).permute(0, 2, 1, 3), end.view(b, hkv, nb, width).permute(0, 2, 1, 3))
    qa = F.pad(qa, (0, 0, 0, 0, 0, nb * block - lq))
    qa = qa.view(b, nb, block, hkv, group, dp).permute(0, 1, 3, 4, 2, 5)  # (b, nb, hkv, group, block, d')
    rel = torch.arange(block, device=q.device, dtype=torch.int32)
    per_call = max(1, MASK_ELEMENTS_PER_CALL // max(1, b * hkv * block * width))
    outs = []
    for t0 in range(0, nb, per_call):
        t1 = min(nb, t0 + per_call)
        m = t1 - t0
        s, e = masks[0][:, t0:t1], masks[1][:, t0:t1]
        mask = (s[..., None, :] <= rel[:, None]) & (rel[:, None] < e[..., None, :])  # (b, m, hkv, block, W)
        attendable = mask.any(-1, keepdim=True)
        mask = mask | (~attendable & (torch.arange(width, device=q.device) == 0))  # no all-masked row
        idx = flat[:, t0:t1].reshape(-1)
        kc = ka.index_select(0, idx).view(b * m * hkv, 1, width, dp).expand(-1, group, -1, -1)
        vc = va.index_select(0, idx).view(b * m * hkv, 1, width, dp).expand(-1, group, -1, -1)
        qc = qa[:, t0:t1].reshape(b * m * hkv, group, block, dp)
        out = F.scaled_dot_product_attention(qc, kc, vc, attn_mask=mask.reshape(b * m * hkv, 1, block, width),
                                             scale=scale)
        out = out[..., :d].view(b, m, hkv, group, block, d)
        out = torch.where(attendable.view(b, m, hkv, 1, block, 1), out, out.new_zeros(()))
        outs.append(out)
    out = torch.cat(outs, dim=1).permute(0, 1, 4, 2, 3, 5).reshape(b, nb * block, hq, d)
    return out[:, :lq].to(q.dtype)


def _windowed_full(q, k, v, bias, keep_window: int, scale: float) -> torch.Tensor:
    """Not causal: every query keeps the same top-``keep_window`` keys of its (batch, KV head)."""
    b, lq, hq, d = q.shape
    lk, hkv = k.shape[1], k.shape[2]
    group = hq // hkv
    rows = bias.permute(0, 2, 1).reshape(b * hkv, lk)
    width = min(keep_window, lk)
    with torch.no_grad():
        top = rank_order(rows)[:, :width]  # (b*hkv, W)
        valid = torch.isfinite(rows.gather(1, top))
    qa, ka, va = _augment(q, k, v, bias, scale, 0.0)
    dp = qa.shape[-1]
    heads = torch.arange(hkv, device=q.device)
    flat = (top.view(b, hkv, width) * hkv + heads[None, :, None]
            + (torch.arange(b, device=q.device) * lk * hkv)[:, None, None]).reshape(-1)
    kc = ka.reshape(-1, dp).index_select(0, flat).view(b * hkv, 1, width, dp).expand(-1, group, -1, -1)
    vc = va.reshape(-1, dp).index_select(0, flat).view(b * hkv, 1, width, dp).expand(-1, group, -1, -1)
    qc = qa.view(b, lq, hkv, group, dp).permute(0, 2, 3, 1, 4).reshape(b * hkv, group, lq, dp)
    attendable = valid.any(-1)  # (b*hkv,)
    mask = valid | (~attendable[:, None] & (torch.arange(width, device=q.device) == 0))
    out = F.scaled_dot_product_attention(qc, kc, vc, attn_mask=mask.view(b * hkv, 1, 1, width), scale=scale)
    out = torch.where(attendable.view(-1, 1, 1, 1), out[..., :d], out.new_zeros(()))
    return out.view(b, hkv, group, lq, d).permute(0, 3, 1, 2, 4).reshape(b, lq, hq, d).to(q.dtype)


def dynamic_mask_attention_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                                 keep_window: int | None, causal: bool, scale: float,
                                 block: int | None = None, seq_idx: torch.Tensor | None = None) -> torch.Tensor:
    """q (b,lq,hq,d), k/v (b,lk,hkv,d), bias (b,lk,hkv) -> (b,lq,hq,d) (arguments already checked).

    ``block``: query block of the windowed causal path (default :func:`default_block`). ``seq_idx (b, l)``:
    document ids of a packed row (causal, ``lq == lk``); each query attends within its document only.
    """
    lk = k.shape[1]
    if keep_window is None or keep_window >= lk:
        return _dense(q, k, v, bias, causal, scale, seq_idx)
    if not causal:
        return _windowed_full(q, k, v, bias, keep_window, scale)
    return _windowed_causal(q, k, v, bias, keep_window, scale, block or default_block(keep_window), seq_idx)
