"""Dynamic mask attention, the oracle: plain loops over batch, query head and query.

For each query the visible keys are listed (with ``seq_idx``, only those of the query's own document), the
``keep_window`` keys with the largest bias are chosen (ties go to the later key; keys with bias ``-inf`` are never
attended), and a softmax over ``q·k·scale + bias`` of the
chosen keys weights the values. Obviously right and slow; differentiable through autograd.
"""
from __future__ import annotations

import torch


def kept_keys(bias_row: list[float], query_pos: int, keep_window: int | None, causal: bool,
              document: tuple[int, int] | None = None) -> list[int]:
    """Indices of the keys one query keeps.

    ``bias_row`` holds one KV head's bias per key; the query sits at key position ``query_pos``. Visible keys
    are ``j <= query_pos`` (all keys when not causal) with a finite bias, and, when ``document = (first, end)``
    is given, only ``first <= j < end`` (the query's own document); of those the ``keep_window`` largest by
    ``(bias, j)`` are kept (all when ``keep_window`` is None).
    """
    first, end = document if document is not None else (0, len(bias_row))
    last = query_pos if causal else end - 1
    visible = [j for j in range(first, min(last, end - 1) + 1) if bias_row[j] != float("-inf")]
    ranked = sorted(visible, key=lambda j: (bias_row[j], j), reverse=True)
    if keep_window is not None:
        ranked = ranked[:keep_window]
    return sorted(ranked)


def dynamic_mask_attention_naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                                 keep_window: int | None, causal: bool, scale: float,
                                 seq_idx: torch.Tensor | None = None) -> torch.Tensor:
    """q (b,lq,hq,d), k/v (b,lk,hkv,d), bias (b,lk,hkv) -> (b,lq,hq,d) in q's dtype (arguments already checked).

    ``seq_idx (b, l)`` (``lq == lk == l``): document id of every position; a query sees only its document's keys.

    Computed in float64 when any input is float64, else float32.
    """
    b, lq, hq, d = q.shape
    lk, hkv = k.shape[1], k.shape[2]
    group = hq // hkv
    offset = lk - lq
    work = torch.float64 if torch.float64 in (q.dtype, k.dtype, v.dtype, bias.dtype) else torch.float32
    qf, kf, vf, bf = q.to(work), k.to(work), v.to(work), bias.to(work)
    bias_values = bias.detach().double().tolist()
    docs = seq_idx.tolist() if seq_idx is not None else None
    rows = []
    for bi in range(b):
        spans = None
        if docs is not None:  # (first, end) of the document of every position
            row = docs[bi]
            firsts = [next(j for j in range(lk) if row[j] == row[i]) for i in range(lk)]
            ends = [max(j for j in range(lk) if row[j] == row[i]) + 1 for i in range(lk)]
            spans = list(zip(firsts, ends))
        heads = []
        for h in range(hq):
            g = h // group
            bias_row = [bias_values[bi][j][g] for j in range(lk)]
            outs = []
            for i in range(lq):
                keys = kept_keys(bias_row, i + offset, keep_window, causal,
                                 spans[i + offset] if spans is not None else None)
                if not keys:
                    outs.append(torch.zeros(d, dtype=work, device=q.device))
                    continue
                idx = torch.tensor(keys, device=q.device)
                logits = (kf[bi, idx, g] @ qf[bi, i, h]) * scale + bf[bi, idx, g]
                weights = torch.softmax(logits, dim=0)
                outs.append(weights @ vf[bi, idx, g])
            heads.append(torch.stack(outs))
        rows.append(torch.stack(heads, dim=1))
    return torch.stack(rows).to(q.dtype)
