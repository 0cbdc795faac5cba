"""The CDMoE layer's output for the few tokens of a decoding step in three Triton launches (docs/design.md,
"CDMoE"; the kernels and their plan are in ``decode_kernels.py``). The layer (``layers/cdmoe.py``) calls it for
``T <= MAX_DECODE_TOKENS`` tokens without autograd; longer inputs and training take the layer's general path."""
from __future__ import annotations

import torch
from torch import Tensor

from ..common import reject, require, shape_of, triton_usable

MAX_DECODE_TOKENS = 16  # tokens of one call: one block of the projections' tl.dot (its smallest M)
MAX_DECODE_TOP_K = 32  # the k² candidate sums of a (token, head) stay in registers
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_ACTIVATIONS = ("silu", "gelu", "relu")


# "auto" takes the fused decoding step on CUDA: its CUDA parity tests (tests/ops/test_experts_cuda.py -k cdmoe_decode,
# float32/bf16/fp16 and a CUDA graph) passed on an H100 (docs/results.md, session 7). Off CUDA only an explicit
# backend="triton" runs it (under the interpreter).
AUTO_USES_DECODE_STEP = True


def decode_step_usable(backend: str, device: torch.device, dtype: torch.dtype, tokens: int, top_k: int) -> bool:
    """Whether :func:`decode_step` runs for a CDMoE layer ``backend`` (``"auto"``: on CUDA with triton while
    ``AUTO_USES_DECODE_STEP`` is set;
    ``"triton"``: required, also under ``TRITON_INTERPRET=1``; ``"torch"``, ``"dense"``: never), activation
    ``dtype`` (float32, bf16, fp16), ``tokens`` (``1 <= T <= MAX_DECODE_TOKENS``) and ``top_k``
    (``<= MAX_DECODE_TOP_K``)."""
    if (backend in ("torch", "dense") or dtype not in _DTYPES or not 1 <= tokens <= MAX_DECODE_TOKENS
            or top_k > MAX_DECODE_TOP_K):
        return False
    if backend == "triton":
        if not triton_usable(device):
            reject("backend", backend, "'triton' needs a CUDA device (or TRITON_INTERPRET=1) and the triton package")
        return True
    return AUTO_USES_DECODE_STEP and device.type == "cuda" and triton_usable(device)


def decode_step(x: Tensor, gate_w: Tensor, up_w: Tensor, down_w: Tensor, query_w: Tensor, keys: Tensor,
                down_table: Tensor, up_table: Tensor, top_k: int, activation: str = "silu",
                gate_b: Tensor | None = None, up_b: Tensor | None = None, down_b: Tensor | None = None,
                workspace: dict | None = None) -> Tensor:
    """``shared(x) + private(x)`` of a CDMoE layer for a few tokens, as three Triton launches.

    ``shared(x) = down_w·(act(gate_w·x + gate_b) ⊙ (up_w·x + up_b)) + down_b``; the private part routes each token
    and head by product keys (query ``query_w·x`` viewed ``(H, 2, dk)``, exact top ``top_k`` of the ``n²``
    experts, gates = softmax of their scores) and adds ``Σ g·act(down_table[e]·x)·up_table[e]``. No host
    synchronisation; float32 arithmetic inside, outputs rounded once.

    Args:
        x: ``(T, d)`` with ``1 <= T <= MAX_DECODE_TOKENS``, float32 / bf16 / fp16.
        gate_w, up_w: ``(I, d)``; down_w: ``(d, I)``; query_w: ``(H·2·dk, d)``.
        keys: ``(H, 2, n, dk)`` sub-keys; down_table, up_table: ``(n², d)``.
        top_k: experts per head, ``1 <= top_k <= min(n, MAX_DECODE_TOP_K)``.
        activation: ``"silu"``, ``"gelu"`` or ``"relu"`` (shared and private parts).
        gate_b, up_b: ``(I,)``, down_b: ``(d,)``: all three or none.
        Every tensor has ``x``'s dtype and device.
        workspace: None, or a dict (one per layer) in which the scratch tensors are kept and reused while the
            shapes stay: a decoding step then allocates only its output (no allocation at all in a CUDA graph
            replay either way).

    Returns:
        ``(T, d)`` in ``x``'s dtype.
    """
    tensors = (gate_w, up_w, down_w, query_w, keys, down_table, up_table)
    biases = (gate_b, up_b, down_b)
    if not (isinstance(x, Tensor) and x.dim() == 2 and 1 <= x.shape[0] <= MAX_DECODE_TOKENS and x.dtype in _DTYPES
            and keys.dim() == 4 and keys.shape[1] == 2 and gate_w.dim() == 2
            and (all(b is None for b in biases) or all(b is not None for b in biases))
            and all(t.dtype == x.dtype and t.device == x.device for t in tensors)
            and (gate_b is None or all(b.dtype == x.dtype and b.device == x.device for b in biases))
            and tuple(gate_w.shape) == tuple(up_w.shape) == (gate_w.shape[0], x.shape[1])
            and tuple(down_w.shape) == (x.shape[1], gate_w.shape[0])
            and tuple(query_w.shape) == (keys.shape[0] * 2 * keys.shape[3], x.shape[1])
            and tuple(down_table.shape) == tuple(up_table.shape) == (keys.shape[2] ** 2, x.shape[1])
            and (gate_b is None or (tuple(gate_b.shape) == tuple(up_b.shape) == (gate_w.shape[0],)
                                    and tuple(down_b.shape) == (x.shape[1],)))
            and isinstance(top_k, int) and 1 <= top_k <= min(keys.shape[2], MAX_DECODE_TOP_K)
            and keys.shape[2] ** 2 < 2 ** 31 and activation in _ACTIVATIONS and triton_usable(x.device)):
        _check_decode_args(x, gate_w, up_w, down_w, query_w, keys, down_table, up_table, top_k, activation,
                           gate_b, up_b, down_b)  # the messages are built only for bad arguments
    from .decode_kernels import decode_step as fused  # imported on first use: no triton, no import

    def c(t):
        return None if t is None else t.contiguous()

    return fused(c(x), c(gate_w), c(up_w), c(down_w), c(query_w), c(keys), c(down_table), c(up_table), top_k,
                 activation, c(gate_b), c(up_b), c(down_b), workspace)


def _check_decode_args(x, gate_w, up_w, down_w, query_w, keys, down_table, up_table, top_k, activation,
                       gate_b, up_b, down_b) -> None:
    """The argument checks of :func:`decode_step`, one error each."""
    require(isinstance(x, Tensor) and x.dim() == 2 and 1 <= x.shape[0] <= MAX_DECODE_TOKENS, "x.shape",
            shape_of(x) if isinstance(x, Tensor) else x, f"(T, d) with 1 <= T <= {MAX_DECODE_TOKENS}")
    require(x.dtype in _DTYPES, "x.dtype", x.dtype, f"one of {_DTYPES}")
    T, d = x.shape
    require(keys.dim() == 4 and keys.shape[1] == 2, "keys.shape", shape_of(keys), "(H, 2, n, dk)")
    H, _, n, dk = keys.shape
    inner = gate_w.shape[0]
    expected = {"gate_w": (inner, d), "up_w": (inner, d), "down_w": (d, inner), "query_w": (H * 2 * dk, d),
                "down_table": (n * n, d), "up_table": (n * n, d)}
    given = {"gate_w": gate_w, "up_w": up_w, "down_w": down_w, "query_w": query_w, "down_table": down_table,
             "up_table": up_table, "keys": keys}
    biases = {"gate_b": gate_b, "up_b": up_b, "down_b": down_b}
    require(all(b is None for b in biases.values()) or all(b is not None for b in biases.values()), "biases",
            [name for name, b in biases.items() if b is not None], "all of gate_b, up_b, down_b or none")
    if gate_b is not None:
        expected.update(gate_b=(inner,), up_b=(inner,), down_b=(d,))
        given.update(biases)
    for name, shape in expected.items():
        require(tuple(given[name].shape) == shape, f"{name}.shape", shape_of(given[name]), f"{shape}")
    for name, t in given.items():
        require(t.dtype == x.dtype, f"{name}.dtype", t.dtype, f"the dtype of x ({x.dtype})")
        require(t.device == x.device, f"{name}.device", t.device, f"the device of x ({x.device})")
    require(isinstance(top_k, int) and 1 <= top_k <= min(n, MAX_DECODE_TOP_K), "top_k", top_k,
            f"an integer in [1, min(n = {n}, {MAX_DECODE_TOP_K})]")
    require(n * n < 2 ** 31, "keys.shape", shape_of(keys), "N = n² < 2^31")
    require(activation in _ACTIVATIONS, "activation", activation, f"one of {_ACTIVATIONS}")
    require(triton_usable(x.device), "x.device", x.device, "a CUDA device (or TRITON_INTERPRET=1) with triton")


__all__ = ["decode_step", "decode_step_usable", "MAX_DECODE_TOKENS", "MAX_DECODE_TOP_K"]
