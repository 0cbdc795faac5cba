"""The SSD oracle: the plain per-time-step recurrence of DESIGN.md, one step at a time.

``S_t = exp(dt_t·A) · S_{t−1} + dt_t · x_t ⊗ B_t``,  ``y_t = S_t · C_t + D · x_t``  (``S`` is ``p × n`` per head;
head ``i`` uses group ``i // (h / g)`` of ``B`` and ``C``). Computed in float64 for float64 inputs, float32
otherwise. Arguments are validated by :func:`wonderful_matrices.ops.ssd.ssd`, not here.
"""
from __future__ import annotations

import torch


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 if any given tensor is float64, else float32 (the accumulation type of the SSD ops)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def ssd_step_naive(state: torch.Tensor, x_t: torch.Tensor, dt_t: torch.Tensor, A: torch.Tensor,
                   B_t: torch.Tensor, C_t: torch.Tensor, D: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the recurrence.

    state (b,h,p,n), x_t (b,h,p), dt_t (b,h), A (h,), B_t/C_t (b,g,n), D (h,) or None
    -> (y_t (b,h,p) in ``x_t.dtype``, new_state (b,h,p,n) in the compute dtype). ``state`` is not modified.
    """
    cdt = compute_dtype(state, x_t)
    h, g = x_t.shape[1], B_t.shape[1]
    r = h // g
    s = state.to(cdt)
    x = x_t.to(cdt)
    dt = dt_t.to(cdt)
    bh = B_t.to(cdt).repeat_interleave(r, dim=1)  # (b,h,n): head i reads group i // r
    ch = C_t.to(cdt).repeat_interleave(r, dim=1)
    decay = torch.exp(dt * A.to(cdt))  # (b,h)
    new_state = decay[:, :, None, None] * s + (dt[:, :, None] * x)[:, :, :, None] * bh[:, :, None, :]
    y = (new_state * ch[:, :, None, :]).sum(-1)
    if D is not None:
        y = y + D.to(cdt)[None, :, None] * x
    return y.to(x_t.dtype), new_state


def ssd_naive(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
              D: torch.Tensor | None = None, initial_state: torch.Tensor | None = None,
              return_final_state: bool = False):
    """The recurrence over all time steps (a Python loop over ``l``: the oracle, not a fast path).

    x (b,l,h,p), dt (b,l,h), A (h,), B/C (b,l,g,n), D (h,) or None, initial_state (b,h,p,n) or None
    -> y (b,l,h,p) in ``x.dtype``, and the final state (b,h,p,n) in the compute dtype if ``return_final_state``.
    """
    b, l, h, p = x.shape
    n = B.shape[-1]
    cdt = compute_dtype(x, initial_state)
    state = (initial_state.to(cdt) if initial_state is not None
             else torch.zeros(b, h, p, n, dtype=cdt, device=x.device))
    ys = []
    for t in range(l):
        y_t, state = ssd_step_naive(state, x[:, t].to(cdt), dt[:, t], A, B[:, t], C[:, t], D)
        ys.append(y_t)
    y = torch.stack(ys, dim=1).to(x.dtype)
    return (y, state) if return_final_state else y
