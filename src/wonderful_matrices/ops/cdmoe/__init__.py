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


try:  # triton is optional: without it the package imports and decode_step_usable says no
    from . import decode_kernels as _kernels
except ImportError:
    _kernels = None


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
    if not (decode_args_valid(x, gate_w, up_w, down_w, query_w, keys, down_table, up_table, top_k, activation,
                              gate_b, up_b, down_b) and triton_usable(x.device)):
        _check_decode_args(x, gate_w, up_w, down_w, query_w, keys, down_table, up_table, top_k, activation,
                           gate_b, up_b, down_b)  # the messages are built only for bad arguments
    return launch_decode_step(x, gate_w, up_w, down_w, query_w, keys, down_table, up_table, top_k, activation,
                              gate_b, up_b, down_b, workspace)


def launch_decode_step(x: Tensor, gate_w: Tensor, up_w: Tensor, down_w: Tensor, query_w: Tensor, keys: Tensor,
                       down_table: Tensor, up_table: Tensor, top_k: int, activation: str = "silu",
                       gate_b: Tensor | None = None, up_b: Tensor | None = None, down_b: Tensor | None = None,
                       workspace: dict | None = None) -> Tensor:
    """:func:`decode_step` without its argument checks, for arguments that :func:`decode_args_valid` accepted (the
    layer asks it once per step to choose this path)."""
    return _kernels.decode_step(
        x.contiguous(), gate_w.contiguous(), up_w.contiguous(), down_w.contiguous(), query_w.contiguous(),
        keys.contiguous(), down_table.contiguous(), up_table.contiguous(), top_k, activation,
        None if gate_b is None else gate_b.contiguous(), None if up_b is None else up_b.contiguous(),
        None if down_b is None else down_b.contiguous(), workspace)


def decode_args_valid(x, gate_w, up_w, down_w, query_w, keys, down_table, up_table, top_k, activation,
                      gate_b=None, up_b=None, down_b=None) -> bool:
    """Whether :func:`decode_step` accepts these arguments on a device where the kernels run (:func:`_check_decode_args`
    passes where :func:`~wonderful_matrices.ops.common.triton_usable`), as one expression: a decoding step builds no
    error message, and the layer (which asked :func:`decode_step_usable` about the device) chooses its path by it."""
    if not (isinstance(x, Tensor) and x.dim() == 2 and isinstance(keys, Tensor) and keys.dim() == 4
            and isinstance(gate_w, Tensor) and gate_w.dim() == 2):
        return False
    dtype, device = x.dtype, x.device
    T, d = x.shape
    H, halves, n, dk = keys.shape
    inner = gate_w.shape[0]
    return (1 <= T <= MAX_DECODE_TOKENS and dtype in _DTYPES and halves == 2
            and gate_w.dtype == dtype and up_w.dtype == dtype and down_w.dtype == dtype and query_w.dtype == dtype
            and keys.dtype == dtype and down_table.dtype == dtype and up_table.dtype == dtype
            and gate_w.device == device and up_w.device == device and down_w.device == device
            and query_w.device == device and keys.device == device and down_table.device == device
            and up_table.device == device
            and gate_w.shape[1] == d and up_w.shape == gate_w.shape and down_w.shape == (d, inner)
            and query_w.shape == (H * 2 * dk, d) and down_table.shape == (n * n, d) and up_table.shape == (n * n, d)
            and (gate_b is None and up_b is None and down_b is None
                 or gate_b is not None and up_b is not None and down_b is not None
                 and gate_b.dtype == dtype and up_b.dtype == dtype and down_b.dtype == dtype
                 and gate_b.device == device and up_b.device == device and down_b.device == device
                 and gate_b.shape == (inner,) and up_b.shape == (inner,) and down_b.shape == (d,))
            and isinstance(top_k, int) and 1 <= top_k <= min(n, MAX_DECODE_TOP_K) and n * n < 2 ** 31
            and activation in _ACTIVATIONS)


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
