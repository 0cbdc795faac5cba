"""One SSD step, the decoding path: ``S_t = exp(dt_t·A) · S_{t−1} + dt_t · x_t ⊗ B_t``, ``y_t = S_t · C_t + D · x_t``.

Computed in float64 for float64 inputs, float32 otherwise. Arguments are validated by
:func:`wonderful_matrices.ops.ssd.ssd_step`, not here.
"""
from __future__ import annotations

import torch


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 if any given tensor is float64, else float32 (the accumulation type of the SSD ops)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def recurrent_step(state: torch.Tensor, x_t: torch.Tensor, dt_t: torch.Tensor, A: torch.Tensor,
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
