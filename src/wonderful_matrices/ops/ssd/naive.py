"""The SSD oracle: the plain per-time-step recurrence (docs/design.md), one step at a time.

``S_t = exp(dt_t·A) · S_{t−1} + dt_t · x_t ⊗ B_t``,  ``y_t = S_t · C_t + D · x_t``  (``S`` is ``p × n`` per head;
head ``i`` uses group ``i // (h / g)`` of ``B`` and ``C``). With ``seq_idx`` the state is zero before a
document's first token (a step whose id differs from the previous step's), so ``S_t = dt_t · x_t ⊗ B_t`` there. Computed
in float64 for float64 inputs, float32
otherwise. Arguments are validated by :func:`wonderful_matrices.ops.ssd.ssd`, not here.
"""
from __future__ import annotations

import torch

from .step import compute_dtype, recurrent_step


def ssd_naive(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
              D: torch.Tensor | None = None, initial_state: torch.Tensor | None = None,
              return_final_state: bool = False, seq_idx: torch.Tensor | None = None):
    """The recurrence over all time steps (a Python loop over ``l``: the oracle, not a fast path).

    x (b,l,h,p), dt (b,l,h), A (h,), B/C (b,l,g,n), D (h,) or None, initial_state (b,h,p,n) or None (it applies
    to the row's first document), seq_idx (b,l) non-decreasing document ids or None (one document) -> y (b,l,h,p) in
    ``x.dtype``, and the final state (b,h,p,n) in the compute dtype if ``return_final_state``.
    """
    b, l, h, p = x.shape
    n = B.shape[-1]
    cdt = compute_dtype(x, initial_state)
    state = (initial_state.to(cdt) if initial_state is not None
             else torch.zeros(b, h, p, n, dtype=cdt, device=x.device))
    ys = []
    for t in range(l):
        if seq_idx is not None and t > 0:
            state = state * (seq_idx[:, t] == seq_idx[:, t - 1]).to(cdt)[:, None, None, None]
        y_t, state = recurrent_step(state, x[:, t].to(cdt), dt[:, t], A, B[:, t], C[:, t], D)
        ys.append(y_t)
    y = torch.stack(ys, dim=1).to(x.dtype)
    return (y, state) if return_final_state else y
