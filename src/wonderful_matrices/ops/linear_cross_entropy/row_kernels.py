"""Cross-entropy over the rows of one chunk of logits in one Triton kernel: the loss of each row and, in place of the
logits, their gradient.

Per row ``r`` with logits ``l`` (any float dtype, read into float32), target ``t`` and weight ``w`` (the row's share
of the loss: ``1 / count`` for a mean, 1 for a sum, 0 for an ignored row): ``lse = logsumexp(l)`` (one online pass),
``loss_r = lse - l[t]`` (0 where ``w == 0``) and, with ``WRITE_GRAD``, a second pass that overwrites ``l`` with
``w · (softmax(l) - one_hot(t))`` rounded to the logits' dtype — the arithmetic of the chunked loss's PyTorch code
(``chunked.py``), which reads the logits five times and writes them three times in float32 where this reads them
twice and writes once in their own dtype.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..triton_utils import interpreting, poisoned_empty

BLOCK_V = 4096  # columns per step of the two passes (a 32K vocabulary: 8 steps)
INTERPRETED_BLOCK_V = 16  # under the interpreter: small vocabularies of the tests take several steps


@triton.jit
def _rows_kernel(logits_ptr, targets_ptr, weights_ptr, loss_ptr, V, stride_row,
                 BLOCK: tl.constexpr, WRITE_GRAD: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride_row
    cols = tl.arange(0, BLOCK)
    m = tl.full((BLOCK,), float("-inf"), tl.float32)
    s = tl.zeros((BLOCK,), tl.float32)
    for v0 in range(0, V, BLOCK):  # per lane: running maximum and sum of exp (one pass)
        x = tl.load(base + v0 + cols, mask=v0 + cols < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, x)
        s = s * tl.exp(tl.where(m_new == float("-inf"), 0.0, m - m_new)) + \
            tl.exp(tl.where(m_new == float("-inf"), float("-inf"), x - m_new))
        m = m_new
    m_row = tl.max(m, 0)
    lse = m_row + tl.log(tl.sum(s * tl.exp(m - m_row), 0))
    target = tl.load(targets_ptr + row)
    weight = tl.load(weights_ptr + row)
    picked = tl.load(base + target).to(tl.float32)
    tl.store(loss_ptr + row, tl.where(weight != 0.0, lse - picked, 0.0))
    if WRITE_GRAD:
        for v0 in range(0, V, BLOCK):
            c = v0 + cols
            x = tl.load(base + c, mask=c < V, other=0.0).to(tl.float32)
            g = (tl.exp(x - lse) - tl.where(c == target, 1.0, 0.0)) * weight
            tl.store(base + c, g.to(logits_ptr.dtype.element_ty), mask=c < V)


def cross_entropy_rows(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, write_grad: bool,
                       out: torch.Tensor | None = None) -> torch.Tensor:
    """logits (c, V) any float dtype with a unit column stride, targets (c,) int64 in ``[0, V)`` on every row (an
    ignored row's target is read but not used: 0 will do), weights (c,) float32 (0: ignored) -> the rows' losses (c,)
    float32 (written into ``out``, a unit-stride (c,) float32 view, when given); with ``write_grad`` the logits are
    overwritten by the loss's gradient with respect to them, ``weights · (softmax - one_hot)``."""
    c, V = logits.shape
    loss = poisoned_empty(c, device=logits.device) if out is None else out
    if c:
        block = INTERPRETED_BLOCK_V if interpreting() else min(BLOCK_V, triton.next_power_of_2(V))
        _rows_kernel[(c,)](logits, targets, weights, loss, V, logits.stride(0), BLOCK=block, WRITE_GRAD=write_grad)
    return loss
