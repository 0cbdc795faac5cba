"""Dynamic mask attention (DMA): causal softmax attention with a learned per-key bias and an optional
per-query top-``keep_window`` selection of keys by that bias (docs/design.md, "DMA"); and its decoding cache
(:mod:`.cache`)."""
from __future__ import annotations

import math

import torch

from ...errors import is_finite_number, is_int
from ..common import reject, require, resolve_backend, shape_of, triton_usable, value_checks_enabled
from . import biased_sdpa as _biased_sdpa
from .cache import DecodeStep, cache_state, cached_in_order, replace_lowest_and_attend, store
from .naive import dynamic_mask_attention_naive
from .selection import selectable_keys
from .windowed import dynamic_mask_attention_torch

try:  # triton is optional: without it the package still imports and the backend is not offered
    from . import biased_causal as _biased_causal
    from . import step_input_kernels as _step_input_kernels
    from . import windowed_kernels as _triton_backend
except ImportError:
    _triton_backend = _biased_causal = _step_input_kernels = None

BACKENDS = ("naive", "torch") + (("triton",) if _triton_backend is not None else ())
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def dynamic_mask_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                           keep_window: int | None = None, causal: bool = True, scale: float | None = None,
                           seq_idx: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
    """Dynamic mask attention.

    Args:
        q: ``(b, lq, hq, d)`` queries.
        k, v: ``(b, lk, hkv, d)`` keys and values, ``hq % hkv == 0`` (query head ``h`` uses KV head
            ``h // (hq / hkv)``).
        bias: ``(b, lk, hkv)`` per-key bias added to the logits; ``-inf`` marks a key never attended
            (padding). Must not be ``+inf`` or NaN. The fast backends take finite values below
            :data:`BIAS_FLOOR` (e.g. a padding mask made of ``torch.finfo(dtype).min``) as ``BIAS_FLOOR``, the
            gradient passing through: such a key gets no weight beside any ordinary key, as in the oracle, and
            a query that sees only such keys outputs their average, as the oracle does (keys below the floor
            count as equal, the window's ties going to the later key). The gradients through such a query's
            output are not exact (float32 cannot hold its log-sum-exp at that magnitude); a padding query's
            output is usually left out of the loss, and the gradients of every other query are.
        keep_window: ``None`` (every visible key) or ``w >= 1``: each query keeps only the ``w`` visible keys
            with the largest bias, ties to the later key (an all-zero bias gives sliding-window attention).
        causal: query ``i`` sits at key position ``i + lk - lq`` (bottom-right aligned) and sees keys ``j <=``
            that position; needs ``lq <= lk``. When False every query sees every key (and with a window keeps
            the top ``w`` of all keys).
        scale: logit scale, default ``1 / sqrt(d)``.
        seq_idx: ``None`` or ``(b, l)`` integer document ids of packed rows, non-decreasing along each row (needs
            ``lq == lk == l`` and ``causal``): a query sees only the keys of its own document, and the window is
            chosen among those, so each document gets exactly what it gets alone.
        backend: ``"auto"`` (``"triton"`` on CUDA, else ``"torch"``), ``"torch"`` (exact, O(L·w) with a
            window), ``"triton"`` (GPU kernels, float16/bfloat16/float32: a causal window shorter than ``k_len``
            with ``head_dim <= 256`` runs the block-sparse kernels of windowed_kernels.py — on the CPU too under
            ``TRITON_INTERPRET=1``; causal attention without a window on CUDA, ``head_dim`` a power of two in
            16…256, runs FlexAttention with the bias as a score modifier (biased_causal.py; with a bias
            gradient, FlexAttention's forward and the Triton backward of biased_causal_kernels.py) — or, without
            ``seq_idx`` and once ``biased_sdpa.AUTO_USES_BIASED_SDPA`` is set, one fused SDPA call with the bias
            as two extra key channels (biased_sdpa.py); other calls run
            the torch path) or ``"naive"`` (loops, the oracle).

    Returns:
        ``(b, lq, hq, d)`` in ``q``'s dtype (accumulated in float32 or better). A query with no attendable key
        outputs zeros.
    """
    for name, t in (("q", q), ("k", k), ("v", v), ("bias", bias)):
        require(isinstance(t, torch.Tensor), name, type(t).__name__, "a torch.Tensor")
        require(t.dtype in FLOAT_DTYPES, f"{name}.dtype", t.dtype, f"one of {FLOAT_DTYPES}")
    require(q.dim() == 4, "q.shape", shape_of(q), "(batch, q_len, q_heads, head_dim)")
    require(k.dim() == 4, "k.shape", shape_of(k), "(batch, k_len, kv_heads, head_dim)")
    b, lq, hq, d = q.shape
    require(k.shape[0] == b and k.shape[3] == d, "k.shape", shape_of(k),
            f"(batch={b}, k_len, kv_heads, head_dim={d}) matching q {shape_of(q)}")
    lk, hkv = k.shape[1], k.shape[2]
    require(v.shape == k.shape, "v.shape", shape_of(v), f"equal to k.shape {shape_of(k)}")
    require(bias.shape == (b, lk, hkv), "bias.shape", shape_of(bias), f"(batch, k_len, kv_heads) = {(b, lk, hkv)}")
    require(b >= 1 and lq >= 1 and lk >= 1 and d >= 1 and hkv >= 1, "q.shape/k.shape", (shape_of(q), shape_of(k)),
            "a non-empty batch, sequences, heads and head_dim")
    require(hq % hkv == 0, "q_heads", hq, f"a multiple of kv_heads={hkv}")
    require(q.dtype == k.dtype == v.dtype, "k.dtype/v.dtype", (k.dtype, v.dtype), f"equal to q.dtype {q.dtype}")
    require(q.device == k.device == v.device == bias.device, "device", (q.device, k.device, v.device, bias.device),
            "all tensors on one device")
    require(isinstance(causal, bool), "causal", causal, "True or False")
    require(not causal or lq <= lk, "q_len", lq, f"<= k_len={lk} when causal (queries are bottom-right aligned)")
    require(keep_window is None or (is_int(keep_window) and keep_window >= 1), "keep_window", keep_window,
            "None or an int >= 1")
    require(scale is None or (is_finite_number(scale) and scale > 0), "scale", scale, "None or a finite number > 0")
    if seq_idx is not None:
        _check_seq_idx(seq_idx, b, lq, lk, causal, q.device)
    if value_checks_enabled():  # one device synchronisation; skipped inside trusted_values()
        require(not (bias.isnan() | (bias == math.inf)).any().item(), "bias",
                f"tensor of shape {shape_of(bias)} with NaN or +inf entries", "finite values or -inf (padding)")
    scale = float(scale) if scale is not None else 1.0 / math.sqrt(d)
    name = resolve_backend(backend, BACKENDS, q.device, ("triton", "torch"))
    if name == "naive":
        return dynamic_mask_attention_naive(q, k, v, bias, keep_window, causal, scale, seq_idx)
    bias = floor_bias(bias)
    if (name == "triton" and causal and keep_window is not None and keep_window < lk and lq > 1
            and q.dtype in _triton_backend.DTYPES and d <= _triton_backend.MAX_HEAD_DIM):
        return _triton_backend.dynamic_mask_attention_triton(q, k, v, bias, keep_window, scale, seq_idx=seq_idx)
    if (name == "triton" and causal and (keep_window is None or keep_window >= lk) and lq > 1 and seq_idx is None
            and q.device.type == "cuda" and _biased_sdpa.AUTO_USES_BIASED_SDPA and _biased_sdpa.supports(q, hkv)):
        return _biased_sdpa.dynamic_mask_attention_biased_sdpa(q, k, v, bias, scale)
    if (name == "triton" and causal and (keep_window is None or keep_window >= lk) and lq > 1
            and q.device.type == "cuda" and q.dtype in _biased_causal.DTYPES and d in _biased_causal.HEAD_DIMS):
        return _biased_causal.dynamic_mask_attention_biased_causal(q, k, v, bias, scale, seq_idx)
    return dynamic_mask_attention_torch(q, k, v, bias, keep_window, causal, scale, seq_idx=seq_idx)


INDEX_DTYPES = (torch.int32, torch.int64)

# The fast paths scale the bias (by 1 / scale to fold it into the keys, by log2(e) for exp2) in float32: a finite
# bias near float32's limit (torch.finfo(torch.float32).min = -3.4e38, the usual "masked" value of HF attention
# masks) overflowed to -inf there (NaN through the torch path, a zero output in the Triton kernels). Values at or
# above the floor keep every scaling finite, and the floor lies far above the -1e30 that the paths give -inf keys
# (windowed.MASKED_BIAS), so a floored key still outweighs a padding key.
BIAS_FLOOR = -1e20


def floor_bias(bias: torch.Tensor) -> torch.Tensor:
    """``bias`` with its finite values below :data:`BIAS_FLOOR` raised to it, the gradient passing straight through
    (``-inf`` kept): (b, lk, hkv) -> the same shape and dtype. A few element-wise passes over the per-key biases, no
    host synchronisation."""
    low = torch.isfinite(bias) & (bias < BIAS_FLOOR)
    # (bias - bias.detach()) is exactly 0 where selected; its -inf - (-inf) = NaN elsewhere is never selected
    return torch.where(low, (bias - bias.detach()) + BIAS_FLOOR, bias)


def _check_seq_idx(seq_idx, b: int, lq: int, lk: int, causal: bool, device: torch.device) -> None:
    """``seq_idx`` must be ``(b, l)`` int32/int64 on the inputs' device, non-decreasing along each row, with
    ``lq == lk == l`` and a causal call (the monotonicity check reads values: skipped where
    :func:`value_checks_enabled` says so)."""
    require(isinstance(seq_idx, torch.Tensor), "seq_idx", type(seq_idx).__name__, "None or a torch.Tensor")
    require(seq_idx.dtype in INDEX_DTYPES, "seq_idx.dtype", seq_idx.dtype, f"one of {INDEX_DTYPES}")
    require(lq == lk, "q_len", lq, f"equal to k_len={lk} when seq_idx is given (packed rows)")
    require(seq_idx.shape == (b, lq), "seq_idx.shape", shape_of(seq_idx), f"(batch, seq_len) = {(b, lq)}")
    require(seq_idx.device == device, "seq_idx.device", seq_idx.device, f"the device of q ({device})")
    require(causal, "causal", causal, "True when seq_idx is given (packed documents are causal sequences)")
    if value_checks_enabled() and lq > 1:
        low = int((seq_idx[:, 1:] - seq_idx[:, :-1]).min())  # one synchronisation
        require(low >= 0, "seq_idx", f"(row with a decreasing step, min step {low})",
                "non-decreasing document ids along each row")


def step_inputs(q: torch.Tensor, k: torch.Tensor, dt: torch.Tensor, position: torch.Tensor, inv_freq: torch.Tensor,
                a: torch.Tensor, mask_form: str = "gate"
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The inputs of one DMA decoding step from the projections, as one Triton launch (CUDA, or the CPU under
    ``TRITON_INTERPRET=1``): RoPE of the query and key heads by ``position · inv_freq``, the key bias
    ``-exp(A_log)·softplus(dt)`` (``mask_form="gate"``; ``"doge"``: ``exp(A·softplus(dt))``) and the position per KV
    head.

    Args:
        q: ``(b, hq, d)`` query projection (``d`` even, ``<= 256``), float32/bf16/fp16; k: ``(b, hkv, d)`` key
            projection, same dtype (``hq % hkv == 0``); both with a contiguous last dim.
        dt: ``(b, hkv)`` the ``dt_proj`` output before softplus; position: ``(b,)`` integer position ids.
        inv_freq: ``(d/2,)`` float32 frequencies ``theta^(-2i/d)``; a: ``(hkv,)`` ``A_log`` or ``A``.

    Returns:
        ``q (b, 1, hq, d)``, ``k (b, 1, hkv, d)`` rotated (``q``'s dtype), ``bias (b, 1, hkv)`` float32 and
        ``position (b, 1, hkv)`` int64: the arguments of :meth:`DecodeStep.step`.
    """
    kernels = _step_input_kernels
    if kernels is None:
        reject("step_inputs", "called without triton", "the triton package (on CUDA, or with TRITON_INTERPRET=1)")
    if not _step_inputs_valid(q, k, dt, position, inv_freq, a, mask_form, kernels.DTYPES, kernels.MASK_FORMS):
        _check_step_inputs(q, k, dt, position, inv_freq, a, mask_form, kernels.DTYPES, kernels.MASK_FORMS)
    return kernels.step_inputs(q, k, dt, position, inv_freq, a.contiguous(), mask_form)


def _step_inputs_valid(q, k, dt, position, inv_freq, a, mask_form, dtypes, mask_forms) -> bool:
    """Whether :func:`_check_step_inputs` passes, as one expression: a decoding step builds no error message."""
    if not (isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor) and isinstance(dt, torch.Tensor)
            and isinstance(position, torch.Tensor) and isinstance(inv_freq, torch.Tensor)
            and isinstance(a, torch.Tensor) and q.dim() == 3 and k.dim() == 3):
        return False
    b, hq, d = q.shape
    hkv = k.shape[1]
    device = q.device
    return (d % 2 == 0 and d <= 256 and q.stride(-1) == 1 and q.dtype in dtypes and k.shape[0] == b
            and k.shape[2] == d and hq % hkv == 0 and k.dtype == q.dtype and k.stride(-1) == 1
            and dt.shape == (b, hkv) and dt.stride(-1) == 1 and position.shape == (b,)
            and not position.is_floating_point() and inv_freq.shape == (d // 2,) and inv_freq.dtype == torch.float32
            and inv_freq.stride(-1) == 1 and a.shape == (hkv,) and mask_form in mask_forms
            and k.device == device and dt.device == device and position.device == device
            and inv_freq.device == device and a.device == device and triton_usable(device))


def _check_step_inputs(q, k, dt, position, inv_freq, a, mask_form, dtypes, mask_forms) -> None:
    """The argument checks of :func:`step_inputs`, one error each."""
    require(isinstance(q, torch.Tensor) and q.dim() == 3 and q.shape[-1] % 2 == 0 and q.shape[-1] <= 256
            and q.stride(-1) == 1, "q.shape", shape_of(q), "(b, hq, d) with d even and <= 256, last dim contiguous")
    b, hq, d = q.shape
    require(q.dtype in dtypes, "q.dtype", q.dtype, f"one of {dtypes}")
    require(isinstance(k, torch.Tensor) and k.dim() == 3 and k.shape[0] == b and k.shape[2] == d
            and hq % k.shape[1] == 0 and k.dtype == q.dtype and k.stride(-1) == 1, "k", (shape_of(k), k.dtype),
            f"(b={b}, hkv, d={d}) with hq={hq} a multiple of hkv, dtype {q.dtype}, last dim contiguous")
    hkv = k.shape[1]
    require(isinstance(dt, torch.Tensor) and dt.shape == (b, hkv) and dt.stride(-1) == 1, "dt.shape", shape_of(dt),
            f"({b}, {hkv}) with a contiguous last dim")
    require(isinstance(position, torch.Tensor) and position.shape == (b,) and not position.is_floating_point(),
            "position", shape_of(position), f"({b},) integer position ids")
    require(isinstance(inv_freq, torch.Tensor) and inv_freq.shape == (d // 2,) and inv_freq.dtype == torch.float32
            and inv_freq.stride(-1) == 1, "inv_freq", (shape_of(inv_freq), inv_freq.dtype), f"({d // 2},) float32")
    require(isinstance(a, torch.Tensor) and a.shape == (hkv,), "a.shape", shape_of(a), f"({hkv},)")
    require(mask_form in mask_forms, "mask_form", mask_form, f"one of {tuple(mask_forms)}")
    devices = {t.device for t in (q, k, dt, position, inv_freq, a)}
    require(len(devices) == 1, "device", sorted(map(str, devices)), "all tensors on one device")
    require(triton_usable(q.device), "device", q.device, "a CUDA device (or TRITON_INTERPRET=1) with triton")


__all__ = ["dynamic_mask_attention", "selectable_keys", "DecodeStep", "cache_state", "cached_in_order",
           "replace_lowest_and_attend", "step_inputs", "store"]
