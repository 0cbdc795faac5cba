"""Learning-rate schedules as multipliers of the peak rate, usable with ``torch.optim.lr_scheduler.LambdaLR``.

* ``"wsd"`` (warmup-stable-decay): linear warmup over ``warmup_steps``, constant, then linear decay to
  ``min_ratio`` over the last ``decay_steps``.
* ``"cosine"``: linear warmup, then half a cosine from 1 down to ``min_ratio`` at ``total_steps``.
* ``"constant"``: linear warmup, then 1.
"""
from __future__ import annotations

import math
from typing import Callable

from ..errors import UserError

SCHEDULES = ("wsd", "cosine", "constant")


def lr_multiplier(kind: str, total_steps: int, warmup_steps: int, decay_steps: int = 0,
                  min_ratio: float = 0.1) -> Callable[[int], float]:
    """Return ``f(step) -> multiplier`` of the peak learning rate for optimizer step ``step`` (0-based)."""
    if kind not in SCHEDULES:
        raise UserError(f"--schedule: got {kind!r}, expected one of {', '.join(SCHEDULES)}")
    if total_steps < 1:
        raise UserError(f"--max-steps: got {total_steps}, expected an integer >= 1")
    if not 0 <= warmup_steps <= total_steps or not 0 <= decay_steps <= total_steps - warmup_steps:
        raise UserError(f"warmup ({warmup_steps}) and decay ({decay_steps}) steps must be >= 0 and fit in "
                        f"{total_steps} steps together; lower --warmup / --decay")
    if not 0.0 <= min_ratio <= 1.0:
        raise UserError(f"--min-lr-ratio: got {min_ratio}, expected a number in [0, 1]")

    def warm(step: int) -> float | None:
        return (step + 1) / warmup_steps if step < warmup_steps else None

    def wsd(step: int) -> float:
        w = warm(step)
        if w is not None:
            return w
        decay_start = total_steps - decay_steps
        if step < decay_start or decay_steps == 0:
            return 1.0
        progress = (step - decay_start + 1) / decay_steps
        return 1.0 - (1.0 - min_ratio) * min(progress, 1.0)

    def cosine(step: int) -> float:
        w = warm(step)
        if w is not None:
            return w
        progress = min((step - warmup_steps + 1) / max(total_steps - warmup_steps, 1), 1.0)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def constant(step: int) -> float:
        w = warm(step)
        return 1.0 if w is None else w

    return {"wsd": wsd, "cosine": cosine, "constant": constant}[kind]
