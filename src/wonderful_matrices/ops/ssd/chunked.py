"""Chunked state-space-dual (SSD) algorithm in plain PyTorch: fully batched, no loop over time steps.

The sequence is cut into chunks of ``q`` steps (``q = min(chunk_size, next power of two >= l)``; the tail is
padded with ``dt = 0`` and ``x = 0``, which leaves the state untouched). With ``a_t = dt_t·A <= 0`` and its
running sum ``cum`` inside a chunk:

1. intra-chunk (quadratic, attention-like): ``y_i = Σ_{j<=i} (C_i·B_j) · exp(cum_i − cum_j) · dt_j x_j``;
2. each chunk's own state: ``U = Σ_j exp(cum_last − cum_j) · dt_j x_j ⊗ B_j``;
3. state passing across chunks: ``S_c = exp(Σ a over chunk c) · S_{c−1} + U_c``, itself computed blockwise with
   the same segment-decay matrices (blocks of ``_SCAN_BLOCK`` chunks, recursively), so the work stays
   batched for any number of chunks;
4. the entering state's contribution: ``y_i += exp(cum_i) · C_i · S_{c−1}``.

Packed documents (``seq_idx``, non-decreasing ids per row): nothing crosses a document start. The intra-chunk
decay matrix is zero between steps of different documents; a step contributes to its chunk's own state only if
it belongs to the chunk's last document; the entering state reaches only the steps of its own document (the
document of the previous chunk's last step; the initial state belongs to the row's first document); and the
state passing restarts at zero after a chunk that contains a document start (its decay factor is masked to 0).

Segment decays are ``exp`` of cumulative-sum differences masked to ``−inf`` above the diagonal before the
exponential, so every exponent is ``<= 0`` (no overflow). Computed in float32 (float64 for float64 inputs);
B and C stay per group (heads are viewed as ``(g, h/g)``), never expanded to all heads.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .step import compute_dtype

_SCAN_BLOCK = 16  # chunks per block of the inter-chunk scan


def running_sum(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``t.cumsum(dim)`` over a short dimension (a chunk, or a block of chunks). While ``torch.compile`` traces, the
    same sums as a masked reduction (``out[i] = Σ_{j<=i} t[j]``, O(n²) for n at most a chunk): Inductor on torch
    2.11 fails to generate code for the scan (an ``InductorError`` on its SplitScan of the (b, c, h, q) chunk sums),
    and a reduction keeps the SSD in one graph."""
    if not torch.compiler.is_compiling():
        return t.cumsum(dim)
    n = t.shape[dim]
    lower = torch.ones(n, n, dtype=torch.bool, device=t.device).tril()  # [i, j]: j <= i
    rows = t.movedim(dim, -1)[..., None, :]  # (..., 1, n)
    sums = torch.where(lower, rows, torch.zeros((), dtype=t.dtype, device=t.device)).sum(-1)
    return sums.to(t.dtype).movedim(-1, dim)


def _next_power_of_two(v: int) -> int:
    return 1 << (v - 1).bit_length()


def segment_decay(cum: torch.Tensor) -> torch.Tensor:
    """cum (..., q) running sums of log-decays -> (..., q, q) with ``exp(cum_i − cum_j)`` for ``j <= i``, 0 above."""
    q = cum.shape[-1]
    causal = torch.ones(q, q, dtype=torch.bool, device=cum.device).tril()
    diff = cum[..., :, None] - cum[..., None, :]  # a fresh tensor: masked and exponentiated in place
    return diff.masked_fill_(~causal, float("-inf")).exp_()


def pass_states(log_decay: torch.Tensor, local: torch.Tensor, initial: torch.Tensor | None,
                reset: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear scan ``S_c = exp(log_decay_c) · [not reset_c] · S_{c−1} + local_c`` over chunks, batched blockwise.

    log_decay (b,c,h) <= 0, local (b,c,h,p,n), initial (b,h,p,n) or None (zeros), reset (b,c) bool or None
    (no chunk drops its entering state)
    -> (entering (b,c,h,p,n): the state before each chunk, final (b,h,p,n): the state after the last).
    """
    b, c, h, p, n = local.shape
    k = min(c, _SCAN_BLOCK)
    m = -(-c // k)
    pad = m * k - c
    if pad:  # padded chunks decay by 1 and add nothing
        log_decay = F.pad(log_decay, (0, 0, 0, pad))
        local = F.pad(local, (0, 0, 0, 0, 0, 0, 0, pad))
        reset = F.pad(reset, (0, pad)) if reset is not None else None
    cum = running_sum(log_decay.reshape(b, m, k, h), 2)  # (b,m,k,h)
    weights = segment_decay(cum.permute(0, 1, 3, 2))  # (b,m,h,k,k)
    kept = None  # (b,m,k,1): 1 where no chunk of the block up to this one reset the state
    if reset is not None:
        resets = running_sum(reset.reshape(b, m, k).to(torch.int32), 2)  # resets so far inside the block
        # chunk j's state reaches chunk i >= j only if no chunk in (j, i] resets
        weights = weights * (resets[..., :, None] == resets[..., None, :])[:, :, None].to(weights.dtype)
        kept = (resets == 0).to(cum.dtype)[..., None]
    after = torch.einsum("bmhij,bmjhs->bmihs", weights, local.reshape(b, m, k, h, p * n))  # zero start per block
    carry = cum.exp() if kept is None else cum.exp() * kept
    if m > 1:
        block_reset = None if reset is None else resets[:, :, -1] > 0
        block_entering, _ = pass_states(cum[:, :, -1], after[:, :, -1].reshape(b, m, h, p, n), initial, block_reset)
        after = after + carry[..., None] * block_entering.reshape(b, m, 1, h, p * n)
    elif initial is not None:
        after = after + carry[..., None] * initial.reshape(b, 1, 1, h, p * n)
    after = after.reshape(b, m * k, h, p, n)[:, :c]
    first = initial[:, None] if initial is not None else torch.zeros_like(after[:, :1])
    return torch.cat([first, after[:, :-1]], dim=1), after[:, -1]


def ssd_chunked(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                chunk_size: int = 64, D: torch.Tensor | None = None, initial_state: torch.Tensor | None = None,
                return_final_state: bool = False, seq_idx: torch.Tensor | None = None):
    """The chunked SSD (arguments validated by :func:`wonderful_matrices.ops.ssd.ssd`).

    x (b,l,h,p), dt (b,l,h), A (h,), B/C (b,l,g,n), D (h,) or None, initial_state (b,h,p,n) or None,
    seq_idx (b,l) non-decreasing document ids or None -> y (b,l,h,p) in ``x.dtype``, and the final state (b,h,p,n) in
    the compute dtype if ``return_final_state``.
    """
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    r = h // g
    cdt = compute_dtype(x, initial_state)
    q = min(chunk_size, _next_power_of_two(l))
    c = -(-l // q)
    pad = c * q - l
    xf, dtf, Bf, Cf = x.to(cdt), dt.to(cdt), B.to(cdt), C.to(cdt)
    init = initial_state.to(cdt) if initial_state is not None else None
    if pad:
        xf = F.pad(xf, (0, 0, 0, 0, 0, pad))
        dtf = F.pad(dtf, (0, 0, 0, pad))
        Bf = F.pad(Bf, (0, 0, 0, 0, 0, pad))
        Cf = F.pad(Cf, (0, 0, 0, 0, 0, pad))
    cum = running_sum((dtf * A.to(cdt)).view(b, c, q, h).permute(0, 1, 3, 2), -1)  # (b,c,h,q), non-increasing
    xdt = (xf * dtf[..., None]).view(b, c, q, g, r, p)
    Bc = Bf.view(b, c, q, g, n)
    Cc = Cf.view(b, c, q, g, n)
    if seq_idx is not None:  # masks (1 = the term stays) of the four places where a boundary cuts
        seq = torch.cat([seq_idx, seq_idx[:, -1:].expand(b, pad)], dim=1).view(b, c, q)  # no boundary in padding
        previous = torch.cat([seq[:, :1, 0], seq[:, :-1, -1]], dim=1)[..., None]  # (b,c,1) the entering document
        same_doc = (seq[..., :, None] == seq[..., None, :]).to(cdt)  # (b,c,q,q)
        in_last_doc = (seq == seq[..., -1:]).to(cdt)  # (b,c,q): reaches the chunk's own state
        in_entering_doc = (seq == previous).to(cdt)  # (b,c,q): sees the entering state
        reset = seq[..., -1] != previous[..., 0]  # (b,c): the chunk drops its entering state

    # 1. intra-chunk quadratic form
    scores = torch.einsum("bcign,bcjgn->bcgij", Cc, Bc)  # (b,c,g,q,q), shared by the heads of a group
    if seq_idx is not None:
        scores = scores * same_doc[:, :, None]
    mixer = segment_decay(cum).view(b, c, g, r, q, q) * scores[:, :, :, None]
    y = torch.einsum("bcgrij,bcjgrp->bcigrp", mixer, xdt)  # (b,c,q,g,r,p)

    need_states = c > 1 or init is not None or return_final_state
    final = None
    if need_states:
        # 2. each chunk's own state (zero entering state)
        to_end = torch.exp(cum[..., -1:] - cum).permute(0, 1, 3, 2)
        if seq_idx is not None:
            to_end = to_end * in_last_doc[..., None]
        local = torch.einsum("bcjgrp,bcjgn->bcgrpn", xdt * to_end.reshape(b, c, q, g, r, 1), Bc).reshape(b, c, h, p, n)
        if c > 1 or init is not None:
            # 3. state passing, 4. the entering state seen from inside the chunk
            entering, final = pass_states(cum[..., -1], local, init, reset if seq_idx is not None else None)
            from_start = cum.exp().permute(0, 1, 3, 2)
            if seq_idx is not None:
                from_start = from_start * in_entering_doc[..., None]
            from_start = from_start.reshape(b, c, q, g, r, 1)
            y = y + torch.einsum("bcign,bcgrpn->bcigrp", Cc, entering.view(b, c, g, r, p, n)) * from_start
        else:
            final = local[:, 0]
    y = y.reshape(b, c * q, h, p)[:, :l]
    if D is not None:
        y = y + x.to(cdt) * D.to(cdt)[:, None]
    y = y.to(x.dtype)
    return (y, final) if return_final_state else y
