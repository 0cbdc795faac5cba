"""Product-key top-k retrieval (Lample et al. 2019): the k best of N = n² experts at O(n + k²) per query."""
from __future__ import annotations

import torch
from torch import Tensor

from ...errors import is_int
from ..common import require, resolve_backend, shape_of
from . import naive as _naive
from . import two_stage as _two_stage

_AVAILABLE = ("naive", "torch", "triton")
_IMPLEMENTATIONS = {"naive": _naive.product_key_topk, "torch": _two_stage.product_key_topk}
_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_TRITON_K = 32  # the fused kernel keeps the k² candidate sums of a token block in registers


def product_key_topk(query: Tensor, sub_keys: Tensor, k: int,
                     backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Exact top-k experts of a product-key table, per token and head.

    Expert ``(a, b)`` of head ``h`` has id ``a·n + b`` and score ``q_0·K_0[a] + q_1·K_1[b]``, where
    ``q_c = query[..., h, c, :]`` and ``K_c = sub_keys[h, c]``; the result equals scoring all ``N = n²`` experts
    and taking the top ``k`` (exact ties may come back in any order among themselves).

    Args:
        query: ``(..., H, 2, dk)`` floating point.
        sub_keys: ``(H, 2, n, dk)``, same dtype and device; ``n = √N`` sub-keys per half.
        k: experts per head, ``1 <= k <= n``.
        backend: ``"auto"`` (``"triton"`` on CUDA for float32/bf16/fp16 and ``k <= 32``, else ``"torch"``),
            ``"triton"`` (one fused kernel: sub-key scores stay in registers, only scores and ids are written;
            also CPU under ``TRITON_INTERPRET=1``), ``"torch"`` (O(n + k²) per token and head) or ``"naive"``
            (scores all N experts; the oracle).

    Returns:
        ``scores (..., H, k)`` sorted descending (float32 for half-precision inputs, else the input dtype;
        differentiable with respect to ``query`` and ``sub_keys``) and ``ids (..., H, k)`` int64 in ``[0, N)``.
    """
    if not (isinstance(query, Tensor) and isinstance(sub_keys, Tensor) and query.is_floating_point()
            and query.dim() >= 3 and query.shape[-2] == 2 and sub_keys.dim() == 4 and sub_keys.shape[1] == 2
            and query.shape[-3] == sub_keys.shape[0] and query.shape[-1] == sub_keys.shape[3] >= 1
            and sub_keys.dtype == query.dtype and sub_keys.device == query.device
            and is_int(k) and 1 <= k <= sub_keys.shape[2]):
        _check_topk_args(query, sub_keys, k)  # the message is built only for bad arguments
    H, _, n, dk = sub_keys.shape
    fused = query.dtype in _TRITON_DTYPES and k <= MAX_TRITON_K and n * n < 2 ** 31
    name = resolve_backend(backend, _AVAILABLE, query.device, ("triton", "torch") if fused else ("torch",))
    if name == "triton":
        require(query.dtype in _TRITON_DTYPES, "query.dtype", query.dtype,
                f"one of {_TRITON_DTYPES} for backend='triton' (float64: 'torch')")
        require(k <= MAX_TRITON_K, "k", k, f"at most {MAX_TRITON_K} for backend='triton' (larger k: 'torch')")
        require(n * n < 2 ** 31, "sub_keys.shape", shape_of(sub_keys), "N = n² < 2^31 for backend='triton'")
        from .topk_kernels import product_key_topk as fused_topk  # imported on first use: no triton, no import

        return fused_topk(query, sub_keys, k)
    return _IMPLEMENTATIONS[name](query, sub_keys, k)


def _check_topk_args(query, sub_keys, k) -> None:
    """The argument checks of :func:`product_key_topk`, one error each."""
    require(isinstance(query, Tensor) and query.is_floating_point() and query.dim() >= 3
            and query.shape[-2] == 2, "query.shape", shape_of(query) if isinstance(query, Tensor) else query,
            "a floating tensor (..., H, 2, dk)")
    require(isinstance(sub_keys, Tensor) and sub_keys.dim() == 4 and sub_keys.shape[1] == 2,
            "sub_keys.shape", shape_of(sub_keys) if isinstance(sub_keys, Tensor) else sub_keys,
            "a tensor (H, 2, n, dk)")
    H, _, n, dk = sub_keys.shape
    require(query.shape[-3] == H and query.shape[-1] == dk, "query.shape", shape_of(query),
            f"(..., H={H}, 2, dk={dk}) to match sub_keys {shape_of(sub_keys)}")
    require(n >= 1 and dk >= 1, "sub_keys.shape", shape_of(sub_keys), "n >= 1 sub-keys of dk >= 1")
    require(sub_keys.dtype == query.dtype, "sub_keys.dtype", sub_keys.dtype, f"the query dtype {query.dtype}")
    require(sub_keys.device == query.device, "sub_keys.device", sub_keys.device, f"the query device {query.device}")
    require(is_int(k) and 1 <= k <= n, "k", k, f"an integer with 1 <= k <= n = {n} (sub-keys per half, √N)")


__all__ = ["product_key_topk"]
