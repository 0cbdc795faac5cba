"""The inputs of one DMA decoding step from the layer's projections, as one Triton launch (GPU; CPU under
``TRITON_INTERPRET=1``).

From one token's query and key projections ``q (b, hq, d)``, ``k (b, hkv, d)``, the ``dt_proj`` output
``dt (b, hkv)`` and the position ids ``(b,)``, a program of (batch row, head) writes, in float32 arithmetic:

* the query or key head rotated by RoPE (rotate-half pairs ``(r, r + d/2)`` by ``position · inv_freq[r]``, the
  float32 frequency table indexed, no cos/sin table built), rounded to the projection's dtype;
* for a key head also its bias, ``-exp(A_log)·softplus(dt)`` (``"gate"``) or ``exp(A·softplus(dt))``
  (``"doge"``), float32, and its position, int64 — the per-KV-head layout :func:`.decode.decode_step` reads.

It replaces the ~25 small kernels of the layer's torch path (``DynamicMaskAttention._project`` without a mask):
no host synchronisation, no allocation but the outputs, so the launch can be recorded in a CUDA graph. The
oracle is that torch path (``tests/ops/test_dma_decode_triton.py``).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..triton_utils import poisoned_empty, pow2_at_least

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MASK_FORMS = {"gate": 1, "doge": 0}


@triton.jit
def _step_inputs_kernel(q_ptr, k_ptr, dt_ptr, pos_ptr, inv_freq_ptr, a_ptr, q_out, k_out, bias_out, pos_out,
                        sqb, sqh, skb, skh, sdb, spb, hq, hkv,
                        HALF: tl.constexpr, BLOCK: tl.constexpr, GATE: tl.constexpr):
    bi = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1)
    r = tl.arange(0, BLOCK)
    m = r < HALF
    pos = tl.load(pos_ptr + bi * spb)
    angle = pos.to(tl.float32) * tl.load(inv_freq_ptr + r, mask=m, other=0.0)
    cos = tl.cos(angle)
    sin = tl.sin(angle)
    if j < hq:
        src = q_ptr + bi * sqb + j * sqh
        dst = q_out + (bi * hq + j) * (2 * HALF)
    else:
        g = j - hq
        src = k_ptr + bi * skb + g * skh
        dst = k_out + (bi * hkv + g) * (2 * HALF)
        # in float64, rounded once, as the layer's key_bias: equal dt give the prefill's bias bit for bit
        v = tl.load(dt_ptr + bi * sdb + g).to(tl.float64)
        e = tl.exp(-tl.abs(v))
        u = 1.0 + e
        log1p = tl.where(u == 1.0, e, tl.log(u) * e / (u - 1.0))  # log(1 + e), accurate for small e
        dt = tl.where(v > 20.0, v, tl.maximum(v, 0.0) + log1p)  # softplus with torch's threshold 20
        a = tl.load(a_ptr + g).to(tl.float64)
        if GATE:
            bias = -tl.exp(a) * dt
        else:
            bias = tl.exp(a * dt)
        tl.store(bias_out + bi * hkv + g, bias.to(tl.float32))
        tl.store(pos_out + bi * hkv + g, pos.to(tl.int64))
    x1 = tl.load(src + r, mask=m, other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF + r, mask=m, other=0.0).to(tl.float32)
    tl.store(dst + r, (x1 * cos - x2 * sin).to(q_out.dtype.element_ty), mask=m)
    tl.store(dst + HALF + r, (x2 * cos + x1 * sin).to(q_out.dtype.element_ty), mask=m)


def step_inputs(q: torch.Tensor, k: torch.Tensor, dt: torch.Tensor, position: torch.Tensor,
                inv_freq: torch.Tensor, a: torch.Tensor, mask_form: str = "gate"
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rotated query and key, bias and position of one decoding token (see the module docstring).

    Args:
        q: ``(b, hq, d)`` the query projection (``d`` even), float32/bf16/fp16, last dim contiguous.
        k: ``(b, hkv, d)`` the key projection, ``q``'s dtype, last dim contiguous.
        dt: ``(b, hkv)`` the ``dt_proj`` output (before softplus), last dim contiguous.
        position: ``(b,)`` integer position ids.
        inv_freq: ``(d/2,)`` float32 RoPE frequencies.
        a: ``(hkv,)`` ``A_log`` (``"gate"``) or ``A`` (``"doge"``).
        mask_form: ``"gate"`` or ``"doge"`` (see ``layers/dma.py``).

    Returns:
        ``q (b, 1, hq, d)`` and ``k (b, 1, hkv, d)`` rotated, in ``q``'s dtype; ``bias (b, 1, hkv)`` float32;
        ``position (b, 1, hkv)`` int64.
    """
    b, hq, d = q.shape
    hkv = k.shape[1]
    half = d // 2
    q_out = poisoned_empty(b, 1, hq, d, dtype=q.dtype, device=q.device)
    k_out = poisoned_empty(b, 1, hkv, d, dtype=q.dtype, device=q.device)
    bias = poisoned_empty(b, 1, hkv, dtype=torch.float32, device=q.device)
    pos = poisoned_empty(b, 1, hkv, dtype=torch.int64, device=q.device)
    _step_inputs_kernel.run(  # (decoding path: launch convention of ops/triton_utils.py)
        q, k, dt, position, inv_freq, a, q_out, k_out, bias, pos, q.stride(0), q.stride(1), k.stride(0),
        k.stride(1), dt.stride(0), position.stride(0), hq, hkv, grid=(b, hq + hkv), warmup=False,
        HALF=half, BLOCK=max(2, pow2_at_least(half)), GATE=MASK_FORMS[mask_form] == 1, num_warps=1)
    return q_out, k_out, bias, pos
