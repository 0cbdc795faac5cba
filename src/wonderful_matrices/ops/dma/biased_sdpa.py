"""Causal DMA without a window as one ordinary scaled-dot-product-attention call: the bias as extra key channels.

The per-key bias is a rank-1 term of the logits. With scale ``s`` and a power of two ``c`` (:func:`channel_scale`),
``s·(q_i·k_j) + b_j = s·([q_i, c, c]·[k_j, hi_j, lo_j])`` where ``hi_j + lo_j = b_j / (s·c)``: ``hi`` is that value
rounded to the input dtype and ``lo`` its rounding error, so the bias enters the half-precision dot product with
~16 (bfloat16) or ~22 (float16) significant bits instead of 8 or 11. Queries, keys and values are zero-padded to a
head dim ``d' = roundup(d + 2, 8)``, and PyTorch's fused kernels (flash, cuDNN, memory-efficient; the math kernel on
the CPU) do all the work, GQA without repeating keys/values (``enable_gqa``). The bias gradient is the gradient of
the ``hi`` channel, from SDPA's ``dk'`` through the concatenation (``lo`` is a constant correction of ``hi``'s
rounding).

Rounding cost (measured on the CPU, B1 L256 H4/2 D64, relative error of the output against the float64
oracle): with ``hi`` alone a bfloat16 bias is off by up to ``|b|·2⁻⁹`` in the logit — 2.4e-2 for biases of
standard deviation 50 (4.5e-3 at 2); with ``hi + lo`` 1.9e-3 (2.9e-3 at 2), the error of bfloat16 ``q``, ``k`` and
``v`` themselves (float16: 1.8e-3 -> 2.4e-4; float32: 3e-7 either way). ``c`` puts ``s·c`` in ``[8, 16)``, so
float16 holds biases up to ``|b| <= 2¹⁵·s·c`` (``>= 2.6e5``; larger ones are clamped to that), and where its
``lo`` channel falls below float16's normal range the absolute logit error stays ``<= s·c·2⁻²⁵ < 5e-7``.

Keys with bias ``-inf`` (padding) get :data:`MASKED_BIAS` (finite, so no ``0·inf`` in the backward; in float16
``-2¹⁶·s·c``, at least ``2¹⁵·s·c`` below any bias), and a query that sees no finite-bias key outputs zeros, as
everywhere in this op.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from .windowed import MASKED_BIAS, attendable_queries

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_HEAD_DIM = 254  # the padded head dim roundup(d + 2, 8) stays <= 256, the fused kernels' limit
# "auto" / "triton" take this path for causal no-window calls on CUDA without seq_idx once its CUDA parity tests
# (tests/ops/test_dma_cuda.py) have passed; until then they run FlexAttention (biased_causal.py).
AUTO_USES_BIASED_SDPA = False


def channel_scale(scale: float) -> float:
    """The power of two ``c`` with ``scale · c`` in ``[8, 16)``: the query value of the bias channels."""
    return 2.0 ** math.ceil(math.log2(8.0 / scale))


def padded_head_dim(d: int) -> int:
    """``d`` plus the two bias channels, rounded up to a multiple of 8."""
    return -(-(d + 2) // 8) * 8


def supports(q: torch.Tensor, kv_heads: int) -> bool:
    """Whether the fused kernels can run this path for queries ``q (b, lq, hq, d)`` on CUDA: a half dtype (float32
    only without GQA: no fused float32 kernel takes GQA) and ``d <=`` :data:`MAX_HEAD_DIM`."""
    half = q.dtype in (torch.float16, torch.bfloat16)
    return q.shape[-1] <= MAX_HEAD_DIM and (half or (q.dtype == torch.float32 and q.shape[2] == kv_heads))


def dynamic_mask_attention_biased_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                                       scale: float) -> torch.Tensor:
    """Causal DMA without a window (queries bottom-right aligned) as one SDPA call.

    Args:
        q: ``(b, lq, hq, d)``; k, v: ``(b, lk, hkv, d)`` with ``lq <= lk``, ``hq % hkv == 0``, ``d <=``
            :data:`MAX_HEAD_DIM`, one dtype of :data:`DTYPES`.
        bias: ``(b, lk, hkv)`` any float dtype; ``-inf`` marks padding keys.
        scale: the logit scale, ``> 0``.

    Returns:
        ``(b, lq, hq, d)`` in ``q``'s dtype; gradients reach q, k, v and bias. The dispatcher
        (``dynamic_mask_attention``) checks the arguments.
    """
    b, lq, hq, d = q.shape
    lk, hkv = k.shape[1], k.shape[2]
    dtype = q.dtype
    c = channel_scale(scale)
    pad = padded_head_dim(d) - d - 2
    exact = torch.float64 if dtype == torch.float64 else torch.float32
    limit = torch.finfo(dtype).max / 2 if dtype == torch.float16 else math.inf
    t = bias.to(exact) / (scale * c)
    masked = max(MASKED_BIAS / (scale * c), -2 * limit)
    t = torch.where(torch.isfinite(bias), t.clamp(-limit, limit), torch.full_like(t, masked))
    hi = t.to(dtype)
    lo = (t.detach() - hi.detach().to(exact)).to(dtype)
    q_aug = torch.cat([q, q.new_full(q.shape[:-1] + (2,), c), q.new_zeros(q.shape[:-1] + (pad,))], dim=-1)
    k_aug = torch.cat([k, hi[..., None], lo[..., None], k.new_zeros(k.shape[:-1] + (pad,))], dim=-1)
    v_aug = F.pad(v, (0, pad + 2))
    mask = causal_lower_right(lq, lk) if lq < lk else None
    out = F.scaled_dot_product_attention(q_aug.transpose(1, 2), k_aug.transpose(1, 2), v_aug.transpose(1, 2),
                                         attn_mask=mask, is_causal=mask is None, scale=scale,
                                         enable_gqa=hq != hkv)
    out = out.transpose(1, 2)[..., :d]
    keep = attendable_queries(bias, lq).repeat_interleave(hq // hkv, dim=2)[..., None]  # (b, lq, hq, 1)
    return torch.where(keep, out, out.new_zeros(()))
