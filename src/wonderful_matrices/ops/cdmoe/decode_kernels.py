"""The CDMoE layer on a few tokens (a decoding step) as three Triton launches (GPU; CPU under
``TRITON_INTERPRET=1``).

For ``T <= MAX_DECODE_TOKENS`` tokens ``x (T, d)`` the layer's ``shared(x) + private(x)`` (docs/design.md,
"CDMoE") takes about a dozen kernels in its general path (three projections, the activation and product of the
SwiGLU, the product-key top-k, the softmax, two mixture kernels, the down projection and the add). Here:

1. ``_project_kernel``: the three matrix-vector products that read ``x`` — ``gate_proj``, ``up_proj`` and
   ``queries`` — in one launch over their output rows (a program owns a block of rows of one weight, so the state
   dict stays as it is: no concatenated copy). A shared-part program computes the same rows of ``gate_proj`` and
   ``up_proj`` and writes ``h = act(gate) · up`` (float32 arithmetic, rounded once to the activation dtype); a
   query program writes its rows of ``q`` (rounded to the activation dtype, as the ``Linear`` would).
2. ``_route_mix_kernel``, one program per (token, head): the sub-key scores of both halves ``BLOCK_N`` at a time
   merged into running top-k sets (the insertion of ``product_key/topk_kernels.py`` on one token's vectors), the
   ``k²`` candidate sums ranked by ``k`` rounds of max-and-remove (the exact top k, see ``product_key/two_stage.py``),
   the softmax gates, then ``s_j = down[e_j]·x``, ``coef_j = g_j·act(s_j)`` and the head's share
   ``Σ_j coef_j·up[e_j]`` (float32, ``(T, H, d)``; no atomics, so the sum over heads below is deterministic).
3. ``_down_kernel``: ``down_proj h`` plus the heads' shares, rounded once to the activation dtype.

Matrix-vector products use ``tl.dot`` on a block of ``MAX_DECODE_TOKENS`` = 16 (its smallest tile) with the missing
tokens masked; float32 inputs multiply in IEEE float32 (as torch's matmul with TF32 off). No host synchronisation and no
allocation but the outputs, so the launches can be recorded in a CUDA graph. Outputs are NaN-poisoned under the
interpreter. The oracle is the layer's torch path (``tests/ops/test_cdmoe_decode_triton.py``).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..expert_mixture.row_kernels import ACTIVATION_CODES, _activation
from ..triton_utils import TunedLaunch, autotune, cdiv, interpreting, poisoned_empty, pow2_at_least
from . import MAX_DECODE_TOKENS


def _matvec_configs():
    if interpreting():
        return [triton.Config({"BLOCK_O": 16, "BLOCK_K": 16}, num_warps=1)]
    return [triton.Config({"BLOCK_O": o, "BLOCK_K": k}, num_warps=w)
            for o, k, w in ((16, 128, 4), (16, 256, 4), (32, 128, 4), (32, 256, 8), (64, 64, 4))]


def _route_configs():
    if interpreting():
        return [triton.Config({"BLOCK_N": 16, "BLOCK_D": 16}, num_warps=1)]
    return [triton.Config({"BLOCK_N": n, "BLOCK_D": b}, num_warps=w)
            for n, b, w in ((32, 256, 2), (64, 256, 4), (64, 512, 4), (128, 512, 8))]


@triton.jit
def _rows_times_tokens(x_ptr, w_ptr, offs_t, mask_t, offs_o, mask_o, D, BLOCK_T: tl.constexpr,
                       BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """``acc[t, o] = Σ_k x[t, k]·w[o, k]`` for row-major ``x (T, D)`` and ``w (O, D)``: (BLOCK_T, BLOCK_O)
    float32."""
    acc = tl.zeros([BLOCK_T, BLOCK_O], tl.float32)
    for k0 in range(0, D, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < D
        x = tl.load(x_ptr + offs_t[:, None] * D + offs_k[None, :], mask=mask_t[:, None] & mask_k[None, :],
                    other=0.0)
        w = tl.load(w_ptr + offs_o.to(tl.int64)[None, :] * D + offs_k[:, None],
                    mask=mask_k[:, None] & mask_o[None, :], other=0.0)  # (BLOCK_K, BLOCK_O)
        acc = tl.dot(x, w, acc, input_precision=PRECISION)
    return acc


@autotune(configs=_matvec_configs(), key=["D", "INNER", "Q"])
@triton.jit
def _project_kernel(x_ptr, gate_w_ptr, up_w_ptr, query_w_ptr, gate_b_ptr, up_b_ptr, h_ptr, q_ptr, T, D, INNER, Q,
                    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, PRECISION: tl.constexpr, BLOCK_T: tl.constexpr,
                    BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr):
    """``h (T, INNER) = act(x·gate_wᵀ + gate_b)·(x·up_wᵀ + up_b)`` and ``q (T, Q) = x·query_wᵀ``; grid
    ``(cdiv(INNER, BLOCK_O) + cdiv(Q, BLOCK_O),)``: the shared-part programs first, then the query programs."""
    pid = tl.program_id(0)
    shared_programs = tl.cdiv(INNER, BLOCK_O)
    offs_t = tl.arange(0, BLOCK_T)
    mask_t = offs_t < T
    if pid < shared_programs:
        offs_o = pid * BLOCK_O + tl.arange(0, BLOCK_O)
        mask_o = offs_o < INNER
        gate = _rows_times_tokens(x_ptr, gate_w_ptr, offs_t, mask_t, offs_o, mask_o, D, BLOCK_T, BLOCK_O, BLOCK_K,
                                  PRECISION)
        up = _rows_times_tokens(x_ptr, up_w_ptr, offs_t, mask_t, offs_o, mask_o, D, BLOCK_T, BLOCK_O, BLOCK_K,
                                PRECISION)
        if HAS_BIAS:
            gate += tl.load(gate_b_ptr + offs_o, mask=mask_o, other=0.0).to(tl.float32)[None, :]
            up += tl.load(up_b_ptr + offs_o, mask=mask_o, other=0.0).to(tl.float32)[None, :]
        value, _ = _activation(gate, ACT)
        tl.store(h_ptr + offs_t[:, None] * INNER + offs_o[None, :], (value * up).to(h_ptr.dtype.element_ty),
                 mask=mask_t[:, None] & mask_o[None, :])
    else:
        offs_o = (pid - shared_programs) * BLOCK_O + tl.arange(0, BLOCK_O)
        mask_o = offs_o < Q
        q = _rows_times_tokens(x_ptr, query_w_ptr, offs_t, mask_t, offs_o, mask_o, D, BLOCK_T, BLOCK_O, BLOCK_K,
                               PRECISION)
        tl.store(q_ptr + offs_t[:, None] * Q + offs_o[None, :], q.to(q_ptr.dtype.element_ty),
                 mask=mask_t[:, None] & mask_o[None, :])


@triton.jit
def _insert(kept_v, kept_i, chunk_v, chunk_i, slots, K: tl.constexpr):
    """Merge a chunk of scores (BLOCK_N,) labelled ``chunk_i`` into the kept set (K_PAD,) (``slots`` its indices):
    the chunk's best replaces the worst kept one while it is larger, at most ``min(K, #{scores > worst})`` times.
    Dead slots (>= K) hold +inf and are never the worst. One-dimensional on purpose: the (1, n) tensors of
    ``topk_kernels._insert_chunk`` for a single token make the sm_90 compilation hang (Triton 3.7)."""
    worst = tl.min(kept_v, axis=0)
    rounds = tl.minimum(tl.sum((chunk_v > worst).to(tl.int32), axis=0), K)
    for _ in range(rounds):
        best = tl.max(chunk_v, axis=0)
        best_i = tl.min(tl.where(chunk_v == best, chunk_i, 2147483647), axis=0)
        worst = tl.min(kept_v, axis=0)
        worst_slot = tl.min(tl.where(kept_v == worst, slots, 2147483647), axis=0)
        # only while the chunk's best beats the worst kept one (elementwise: kept_v is ``worst`` at its slot, and
        # chunk_v is ``best`` at its label)
        replace = (slots == worst_slot) & (kept_v < best)
        kept_v = tl.where(replace, best, kept_v)
        kept_i = tl.where(replace, best_i, kept_i)
        chunk_v = tl.where((chunk_i == best_i) & (chunk_v > worst), float("-inf"), chunk_v)
    return kept_v, kept_i


@triton.jit
def _half_top_k(q_ptr, keys_ptr, t, h, c, H, N_KEYS, DK, K: tl.constexpr, K_PAD: tl.constexpr,
                DK_PAD: tl.constexpr, BLOCK_N: tl.constexpr):
    """The k best sub-key scores of half ``c`` of head ``h`` for token ``t`` (unordered): values (K_PAD,) float32
    and sub-key indices int32; dead slots (>= K) hold +inf."""
    offs_d = tl.arange(0, DK_PAD)
    mask_d = offs_d < DK
    q = tl.load(q_ptr + ((t * H + h) * 2 + c) * DK + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    slots = tl.arange(0, K_PAD)
    kept_v = tl.where(slots < K, float("-inf"), float("inf"))
    kept_i = slots
    for n0 in range(0, N_KEYS, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N_KEYS
        keys = tl.load(keys_ptr + ((h * 2 + c) * N_KEYS + offs_n[:, None]) * DK + offs_d[None, :],
                       mask=mask_n[:, None] & mask_d[None, :], other=0.0).to(tl.float32)  # (BLOCK_N, DK_PAD)
        scores = tl.where(mask_n, tl.sum(keys * q[None, :], axis=1), float("-inf"))
        kept_v, kept_i = _insert(kept_v, kept_i, scores, offs_n, slots, K)
    return kept_v, kept_i


@autotune(configs=_route_configs(), key=["N_KEYS", "DK", "D", "K"])
@triton.jit
def _route_mix_kernel(x_ptr, q_ptr, keys_ptr, down_ptr, up_ptr, out_ptr, H, N_KEYS, DK, D,
                      K: tl.constexpr, K_PAD: tl.constexpr, DK_PAD: tl.constexpr, ACT: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """``out[t, h] = Σ_j g_j·act(down[e_j]·x[t])·up[e_j]`` (float32, (T, H, D)) over the top-k experts ``e_j`` of
    head ``h`` for query ``q (T, H, 2, DK)`` and sub-keys ``(H, 2, N_KEYS, DK)``, ``g = softmax`` of their scores;
    grid (T, H)."""
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    v0, a = _half_top_k(q_ptr, keys_ptr, t, h, 0, H, N_KEYS, DK, K, K_PAD, DK_PAD, BLOCK_N)
    v1, b = _half_top_k(q_ptr, keys_ptr, t, h, 1, H, N_KEYS, DK, K, K_PAD, DK_PAD, BLOCK_N)
    slots = tl.arange(0, K_PAD)
    live = slots < K
    sums = tl.where(live[:, None] & live[None, :], v0[:, None] + v1[None, :], float("-inf"))
    ids = a[:, None] * N_KEYS + b[None, :]  # distinct within a head; N < 2^31
    sums = tl.reshape(sums, [K_PAD * K_PAD])
    ids = tl.reshape(ids, [K_PAD * K_PAD])
    best_v = tl.full([K_PAD], float("-inf"), tl.float32)
    best_i = tl.zeros([K_PAD], tl.int32)
    for r in range(K):  # descending, as product_key_topk returns them
        best = tl.max(sums, axis=0)
        best_id = tl.min(tl.where(sums == best, ids, 2147483647), axis=0)
        best_v = tl.where(slots == r, best, best_v)
        best_i = tl.where(slots == r, best_id, best_i)
        sums = tl.where(ids == best_id, float("-inf"), sums)
    weights = tl.where(live, tl.exp(best_v - tl.max(best_v, axis=0)), 0.0)
    gates = weights / tl.sum(weights, axis=0)
    rows = best_i.to(tl.int64)[:, None] * D
    dots = tl.zeros([K_PAD, BLOCK_D], tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        x = tl.load(x_ptr + t * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        down = tl.load(down_ptr + rows + offs_d[None, :], mask=live[:, None] & mask_d[None, :], other=0.0)
        dots += down.to(tl.float32) * x[None, :]
    value, _ = _activation(tl.sum(dots, axis=1), ACT)
    coef = tl.where(live, gates * value, 0.0)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        up = tl.load(up_ptr + rows + offs_d[None, :], mask=live[:, None] & mask_d[None, :], other=0.0)
        share = tl.sum(coef[:, None] * up.to(tl.float32), axis=0)
        tl.store(out_ptr + (t * H + h) * D + offs_d, share, mask=mask_d)


@autotune(configs=_matvec_configs(), key=["D", "INNER", "H"])
@triton.jit
def _down_kernel(h_ptr, down_w_ptr, down_b_ptr, private_ptr, out_ptr, T, D, INNER, H,
                 HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_O: tl.constexpr,
                 BLOCK_K: tl.constexpr):
    """``out (T, D) = h·down_wᵀ + down_b + Σ_heads private[:, head]`` for ``h (T, INNER)``, ``private (T, H, D)``
    float32; grid (cdiv(D, BLOCK_O),)."""
    offs_t = tl.arange(0, BLOCK_T)
    mask_t = offs_t < T
    offs_o = tl.program_id(0) * BLOCK_O + tl.arange(0, BLOCK_O)
    mask_o = offs_o < D
    mask = mask_t[:, None] & mask_o[None, :]
    acc = _rows_times_tokens(h_ptr, down_w_ptr, offs_t, mask_t, offs_o, mask_o, INNER, BLOCK_T, BLOCK_O, BLOCK_K,
                             PRECISION)
    if HAS_BIAS:
        acc += tl.load(down_b_ptr + offs_o, mask=mask_o, other=0.0).to(tl.float32)[None, :]
    for head in range(H):
        acc += tl.load(private_ptr + (offs_t[:, None] * H + head) * D + offs_o[None, :], mask=mask, other=0.0)
    tl.store(out_ptr + offs_t[:, None] * D + offs_o[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


# launched through the autotuner once per shape (the keys below determine each autotuner's own), then directly
_project = TunedLaunch(_project_kernel)
_route_mix = TunedLaunch(_route_mix_kernel)
_down = TunedLaunch(_down_kernel)


def decode_step(x: torch.Tensor, gate_w: torch.Tensor, up_w: torch.Tensor, down_w: torch.Tensor,
                query_w: torch.Tensor, keys: torch.Tensor, down_table: torch.Tensor, up_table: torch.Tensor,
                top_k: int, activation: str, gate_b: torch.Tensor | None = None, up_b: torch.Tensor | None = None,
                down_b: torch.Tensor | None = None, workspace: dict | None = None) -> torch.Tensor:
    """The CDMoE output of ``x (T, d)`` contiguous, ``T <= MAX_DECODE_TOKENS``, every tensor of ``x``'s dtype and
    device and contiguous: ``gate_w, up_w (I, d)``, ``down_w (d, I)``, ``query_w (H·2·dk, d)``, ``keys (H, 2, n, dk)``,
    ``down_table, up_table (n², d)``, biases ``(I,)``, ``(I,)``, ``(d,)`` all or none -> ``(T, d)``
    (see the module docstring). ``workspace``: a dict that keeps the scratch tensors between calls of the same
    shapes (one per layer), so a decoding step allocates only its output."""
    T, d = x.shape
    inner = gate_w.shape[0]
    H, _, n, dk = keys.shape
    q_width = query_w.shape[0]
    spec = (T, d, inner, q_width, H, x.dtype, x.device)
    if workspace is None or workspace.get("spec") != spec:
        scratch = dict(spec=spec, h=poisoned_empty(T, inner, dtype=x.dtype, device=x.device),
                       q=poisoned_empty(T, q_width, dtype=x.dtype, device=x.device),
                       private=poisoned_empty(T, H, d, dtype=torch.float32, device=x.device))
        if workspace is not None:
            workspace.clear()
            workspace.update(scratch)
    else:
        scratch = workspace
    h, q, private = scratch["h"], scratch["q"], scratch["private"]
    out = poisoned_empty(T, d, dtype=x.dtype, device=x.device)
    if T == 0:
        return out
    has_bias = gate_b is not None
    precision = "ieee" if x.dtype == torch.float32 else "tf32"
    act = ACTIVATION_CODES[activation]
    _project(lambda meta: (cdiv(inner, meta["BLOCK_O"]) + cdiv(q_width, meta["BLOCK_O"]),),
             (d, inner, q_width, x.dtype), x, gate_w, up_w, query_w, gate_b if has_bias else x,
             up_b if has_bias else x, h, q, T, d, inner, q_width, HAS_BIAS=has_bias, ACT=act, PRECISION=precision,
             BLOCK_T=MAX_DECODE_TOKENS)
    _route_mix((T, H), (n, dk, d, top_k, x.dtype), x, q, keys, down_table, up_table, private, H, n, dk, d, K=top_k,
               K_PAD=max(2, pow2_at_least(top_k)), DK_PAD=max(2, pow2_at_least(dk)), ACT=act)
    _down(lambda meta: (cdiv(d, meta["BLOCK_O"]),), (d, inner, H, x.dtype),
          h, down_w, down_b if has_bias else x, private, out, T, d, inner, H, HAS_BIAS=has_bias, PRECISION=precision,
          BLOCK_T=MAX_DECODE_TOKENS)
    return out
