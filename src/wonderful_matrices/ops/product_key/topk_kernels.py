"""Product-key top-k as one fused Triton kernel (GPU; also CPU under ``TRITON_INTERPRET=1``).

Forward, one program per block of ``BLOCK_T`` tokens and one head: for each half ``c`` the sub-key scores
``s_c = q_c · K_c`` are computed ``BLOCK_N`` sub-keys at a time with ``tl.dot`` (float32 accumulation) and merged
into a running top-k kept in registers, so the ``(tokens, H, 2, √N)`` scores never reach memory. The merge
inserts the best remaining score of the chunk in place of the worst kept one while it is larger; a chunk needs at
most ``min(k, #{scores > worst kept})`` insertions (the chunk's scores come out in descending order and the worst
kept one only rises), so the program runs ``max`` of that count over its tokens and later chunks, which rarely
beat the kept set, cost a few rounds. Then the ``k²`` candidate sums ``s_0[a] + s_1[b]`` of the two kept sets
(whose top k is the exact top k over all ``N`` experts; see ``two_stage.py``) are ranked by ``k`` rounds of
max-and-remove. Only ``scores (T, H, k)`` float32 and ``ids (T, H, k)`` are written. Exact ties may come out in
another order than brute force: equal values, any of them is a correct top k.

``FORWARD = "bitonic"`` selects the same forward by sorting networks instead (``_topk_forward_bitonic_kernel``): each
score and its label are packed into one int64 whose order is the score's, then the label's (:func:`_pack`), and
Triton's bitonic ``tl.topk`` keeps the best ``K_PAD`` of a chunk, of a chunk merged with the kept set, and of the
``K_PAD²`` candidate sums — a fixed number of compare-and-swap rounds in place of one round of four row reductions
per insertion. ``FORWARD = "auto"`` (the default) takes the sorting networks for tables of at most
``BITONIC_MAX_KEYS`` sub-keys per half and insertion above: on an H100 (``scripts/topk_bench.py``, session 14,
docs/results/session14_h100/call1/) the bitonic forward took 0.204 against 0.296 ms at cheems-base's routing
(√N = 48, k = 8) and 0.312 against 0.491 ms at √N = 32, k = 16, but 5.35 against 1.64 ms at √N = 1024, k = 16 (its
fixed rounds per chunk, against insertions that stop once later chunks rarely beat the kept set). Sizes between 64
and 1024 were not timed; insertion is kept there. Both are interpreter-tested and in the CUDA parity test.

Backward: the score of the ``j``-th pick is ``q_0·K_0[a_j] + q_1·K_1[b_j]``, so
``grad q_c = Σ_j g_j · K_c[idx_j]`` (a gather of sub-key rows) and ``grad K_c[idx] += g_j · q_c`` (a scatter). For
larger tables one program per token block and head does both; the scatter adds float32 atomically into an
``(H, 2, √N, dk)`` buffer, rounded to the sub-key dtype once at the end. With few sub-keys (``√N <=
SMALL_TABLE_KEYS``, cheems-base's 48) every token's picks land on the same few rows, so one atomic per pick and
column (``T·H·k·2·dk`` of them, ~5000 on each address at cheems-base) queues on the same addresses. There
``SMALL_TABLE_BACKWARD`` picks one of:

* ``"reduced"`` (default): a Triton program of ``BLOCK_T`` tokens sums its picks per sub-key as ``A``
  (``(√N, BLOCK_T)``, float32), so ``grad q_c = Aᵀ·K_c`` and the program's share of ``grad K_c = A·q_c`` are two
  float32 products (tf32x3) and it adds ``√N·dk`` values atomically, ``BLOCK_T·k/√N`` times fewer (11× at cheems-base).
* ``"atomic"``: the kernel of larger tables.

Both are interpreter-tested and in the CUDA parity test. On an H100 at cheems-base's layer (32768 tokens, 4 heads
× top-8, √N = 48, dk = 32; ``scripts/experts_kernel_times.py``, docs/results.md "Session 11") one backward takes
0.25 ms reduced and 0.60 ms atomic. Building ``A`` for all tokens as a dense float32 ``(T, H, 2, √N)`` tensor and
taking the two products with torch instead is slower, 1.56 ms: cuBLAS runs float32 products this thin on plain FMA
units (14.5 ms of a 117 ms compiled cheems-base training step for the 12 layers).

Launch settings are autotuned on the GPU (one small configuration under the interpreter, so tests cross the token
and sub-key block boundaries). Outputs are NaN-poisoned under the interpreter, so an unwritten element fails tests.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import triton
import triton.language as tl

from ..common import require
from ..triton_utils import autotune, interpreting, opaque_to_compile, poisoned_empty

# backward: sub-keys per half up to which the table counts as small (the module docstring: SMALL_TABLE_BACKWARD picks
# its backward), and the elements of the reduced kernel's (sub-keys, tokens) float32 sum per program (32 per thread
# on 4 warps); larger tiles spill on sm_90 (64 sub-keys × 128 tokens, 128 × 32: scripts/experts_compile_report.py)
SMALL_TABLE_KEYS = 64
SMALL_TABLE_BACKWARDS = ("reduced", "atomic")
SMALL_TABLE_BACKWARD = "reduced"
REDUCED_TILE = 4096
FORWARDS = ("insertion", "bitonic")
FORWARD = "auto"  # or one of FORWARDS for every size
BITONIC_MAX_KEYS = 64  # "auto": sub-keys per half up to which the bitonic forward runs (module docstring)


@contextlib.contextmanager
def kinds(forward: str | None = None, small_table_backward: str | None = None) -> Iterator[None]:
    """``with kinds(forward="bitonic"): ...`` — :data:`FORWARD` and/or :data:`SMALL_TABLE_BACKWARD` switched inside
    the block (side-by-side timings), as they were after it."""
    global FORWARD, SMALL_TABLE_BACKWARD
    saved = FORWARD, SMALL_TABLE_BACKWARD
    FORWARD, SMALL_TABLE_BACKWARD = forward or FORWARD, small_table_backward or SMALL_TABLE_BACKWARD
    try:
        yield
    finally:
        FORWARD, SMALL_TABLE_BACKWARD = saved


def _forward_configs():
    if interpreting():
        return [triton.Config({"BLOCK_T": 16, "BLOCK_N": 16}, num_warps=1)]
    return [triton.Config({"BLOCK_T": t, "BLOCK_N": n}, num_warps=w)
            for t, n, w in ((16, 32, 4), (16, 64, 4), (16, 128, 4), (16, 128, 8), (32, 128, 8),
                            (32, 64, 4), (64, 64, 8))]  # wider token blocks: fewer programs when √N <= 64


@triton.jit
def _insert_chunk(kept_v, kept_i, chunk_v, chunk_i, slots, K: tl.constexpr):
    """Merge a chunk of scores (BLOCK_T, BLOCK_N) with labels ``chunk_i`` into the kept set (BLOCK_T, K_PAD)
    (``slots`` its column indices); dead slots (``>= K``) hold +inf and are never the worst."""
    worst = tl.min(kept_v, axis=1)
    rounds = tl.max(tl.minimum(tl.sum((chunk_v > worst[:, None]).to(tl.int32), axis=1), K), axis=0)
    for _ in range(rounds):
        best = tl.max(chunk_v, axis=1)
        best_i = tl.min(tl.where(chunk_v == best[:, None], chunk_i, 2147483647), axis=1)
        worst = tl.min(kept_v, axis=1)
        worst_slot = tl.min(tl.where(kept_v == worst[:, None], slots, 2147483647), axis=1)
        take = best > worst  # rows whose chunk still beats the kept set
        replace = take[:, None] & (slots == worst_slot[:, None])
        kept_v = tl.where(replace, best[:, None], kept_v)
        kept_i = tl.where(replace, best_i[:, None], kept_i)
        chunk_v = tl.where(take[:, None] & (chunk_i == best_i[:, None]), float("-inf"), chunk_v)
    return kept_v, kept_i


@triton.jit
def _half_query(q_ptr, offs_t, mask_t, h, c, H, DK, DK_PAD: tl.constexpr):
    """The queries of half ``c`` for the token block: (BLOCK_T, DK_PAD), zero past DK and T."""
    offs_d = tl.arange(0, DK_PAD)
    return tl.load(q_ptr + ((offs_t.to(tl.int64)[:, None] * H + h) * 2 + c) * DK + offs_d[None, :],
                   mask=mask_t[:, None] & (offs_d < DK)[None, :], other=0.0)


@triton.jit
def _chunk_scores(q, keys_ptr, h, c, n0, N_KEYS, DK, BLOCK_N: tl.constexpr, DK_PAD: tl.constexpr,
                  PRECISION: tl.constexpr):
    """Scores of ``q`` (BLOCK_T, DK_PAD) against sub-keys ``n0 .. n0 + BLOCK_N`` of half ``c``: (BLOCK_T, BLOCK_N)
    float32, -inf past N_KEYS, and the sub-key indices (BLOCK_N,)."""
    offs_d = tl.arange(0, DK_PAD)
    offs_n = n0 + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N_KEYS
    keys = tl.load(keys_ptr + ((h * 2 + c) * N_KEYS + offs_n[None, :]) * DK + offs_d[:, None],
                   mask=(offs_d < DK)[:, None] & mask_n[None, :], other=0.0)  # (DK_PAD, BLOCK_N)
    return tl.where(mask_n[None, :], tl.dot(q, keys, input_precision=PRECISION), float("-inf")), offs_n


@triton.jit
def _half_topk(q_ptr, keys_ptr, offs_t, mask_t, h, c, H, N_KEYS, DK,
               K: tl.constexpr, K_PAD: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr,
               DK_PAD: tl.constexpr, PRECISION: tl.constexpr):
    """The k best sub-key scores of half ``c`` (unordered; slots >= k dead): values (BLOCK_T, K_PAD) float32 and
    sub-key indices int32."""
    q = _half_query(q_ptr, offs_t, mask_t, h, c, H, DK, DK_PAD)
    slots = tl.arange(0, K_PAD)[None, :] + tl.zeros([BLOCK_T, K_PAD], tl.int32)
    kept_v = tl.where(slots < K, float("-inf"), float("inf"))
    kept_i = slots
    for n0 in range(0, N_KEYS, BLOCK_N):
        scores, offs_n = _chunk_scores(q, keys_ptr, h, c, n0, N_KEYS, DK, BLOCK_N, DK_PAD, PRECISION)
        labels = offs_n[None, :] + tl.zeros([BLOCK_T, BLOCK_N], tl.int32)
        kept_v, kept_i = _insert_chunk(kept_v, kept_i, scores, labels, slots, K)
    return kept_v, kept_i


@autotune(configs=_forward_configs(), key=["N_KEYS", "DK", "K"])
@triton.jit
def _topk_forward_kernel(q_ptr, keys_ptr, scores_ptr, ids_ptr, T, H, N_KEYS, DK,
                         K: tl.constexpr, K_PAD: tl.constexpr, DK_PAD: tl.constexpr, PRECISION: tl.constexpr,
                         BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr):
    """scores/ids (T, H, K) of query (T, H, 2, DK) against keys (H, 2, N_KEYS, DK); grid (cdiv(T, BLOCK_T), H)."""
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_t = offs_t < T
    h = tl.program_id(1)
    v0, a = _half_topk(q_ptr, keys_ptr, offs_t, mask_t, h, 0, H, N_KEYS, DK, K, K_PAD, BLOCK_T, BLOCK_N, DK_PAD,
                       PRECISION)
    v1, b = _half_topk(q_ptr, keys_ptr, offs_t, mask_t, h, 1, H, N_KEYS, DK, K, K_PAD, BLOCK_T, BLOCK_N, DK_PAD,
                       PRECISION)
    live = tl.arange(0, K_PAD) < K
    pair_live = live[:, None] & live[None, :]
    sums = tl.where(pair_live[None, :, :], v0[:, :, None] + v1[:, None, :], float("-inf"))
    ids = a[:, :, None] * N_KEYS + b[:, None, :]  # distinct within a token; N < 2^31
    sums = tl.reshape(sums, [BLOCK_T, K_PAD * K_PAD])
    ids = tl.reshape(ids, [BLOCK_T, K_PAD * K_PAD])
    out = (offs_t.to(tl.int64)[:, None] * H + h) * K + tl.arange(0, K_PAD)[None, :]
    out_v = tl.zeros([BLOCK_T, K_PAD], tl.float32)
    out_i = tl.zeros([BLOCK_T, K_PAD], tl.int32)
    for r in range(K):
        best = tl.max(sums, axis=1)
        best_id = tl.min(tl.where(sums == best[:, None], ids, 2147483647), axis=1)
        column = tl.arange(0, K_PAD)[None, :] == r
        out_v = tl.where(column, best[:, None], out_v)
        out_i = tl.where(column, best_id[:, None], out_i)
        sums = tl.where(ids == best_id[:, None], float("-inf"), sums)
    store = mask_t[:, None] & live[None, :]
    tl.store(scores_ptr + out, out_v, mask=store)
    tl.store(ids_ptr + out, out_i.to(tl.int64), mask=store)


def _bitonic_configs():
    if interpreting():
        return [triton.Config({"BLOCK_T": 16}, num_warps=1)]
    return [triton.Config({"BLOCK_T": t}, num_warps=w) for t, w in ((16, 4), (16, 8), (32, 4), (32, 8), (64, 8))]


BITONIC_VALUES_PER_THREAD = 32  # int64 values of the widest tile per thread: wider tiles spill


def bitonic_configs_for(configs, K_PAD: int, BLOCK_N: int):
    """The configurations whose widest tile (the K_PAD² candidate sums or a chunk of BLOCK_N scores, per token of
    the block) keeps at most BITONIC_VALUES_PER_THREAD values per thread; the smallest one when none does."""
    def per_thread(config):
        return config.kwargs["BLOCK_T"] * max(K_PAD * K_PAD, BLOCK_N) / (32 * config.num_warps)

    fitting = [c for c in configs if per_thread(c) <= BITONIC_VALUES_PER_THREAD]
    return fitting or [min(configs, key=per_thread)]


def _prune_bitonic(configs, named_args, **kwargs):
    return bitonic_configs_for(configs, kwargs["K_PAD"], kwargs["BLOCK_N"])


@triton.jit
def _pack(value, label):
    """float32 ``value`` and int32 ``label`` in [0, 2^31) -> int64 ordered as (value, label): the float's bits
    turned into an int32 of the same order (negatives: the magnitude bits flipped) in the high half."""
    bits = value.to(tl.int32, bitcast=True)
    key = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return (key.to(tl.int64) << 32) | label.to(tl.int64)


@triton.jit
def _unpack(packed):
    """The inverse of :func:`_pack`: (float32 value, int32 label)."""
    key = (packed >> 32).to(tl.int32)
    bits = key ^ ((key >> 31) & 0x7FFFFFFF)
    return bits.to(tl.float32, bitcast=True), (packed & 0xFFFFFFFF).to(tl.int32)


@triton.jit
def _half_topk_bitonic(q_ptr, keys_ptr, offs_t, mask_t, h, c, H, N_KEYS, DK,
                       K_PAD: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr, DK_PAD: tl.constexpr,
                       PRECISION: tl.constexpr):
    """The ``K_PAD`` best sub-key scores of half ``c``, packed (:func:`_pack`) and sorted descending:
    (BLOCK_T, K_PAD) int64; slots past ``N_KEYS`` hold -inf."""
    q = _half_query(q_ptr, offs_t, mask_t, h, c, H, DK, DK_PAD)
    kept = tl.zeros([BLOCK_T, K_PAD], tl.int64)
    for n0 in range(0, N_KEYS, BLOCK_N):
        scores, offs_n = _chunk_scores(q, keys_ptr, h, c, n0, N_KEYS, DK, BLOCK_N, DK_PAD, PRECISION)
        best = tl.topk(_pack(scores, offs_n[None, :] + tl.zeros([BLOCK_T, BLOCK_N], tl.int32)), K_PAD, dim=1)
        if n0 == 0:
            kept = best
        else:
            kept = tl.topk(tl.reshape(tl.join(kept, best), [BLOCK_T, 2 * K_PAD]), K_PAD, dim=1)
    return kept


@autotune(configs=_bitonic_configs(), key=["N_KEYS", "DK", "K"],
                 prune_configs_by={"early_config_prune": _prune_bitonic})
@triton.jit
def _topk_forward_bitonic_kernel(q_ptr, keys_ptr, scores_ptr, ids_ptr, T, H, N_KEYS, DK,
                                 K: tl.constexpr, K_PAD: tl.constexpr, DK_PAD: tl.constexpr,
                                 PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr):
    """As ``_topk_forward_kernel``, by sorting networks (module docstring); ``K_PAD <= BLOCK_N``."""
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_t = offs_t < T
    h = tl.program_id(1)
    v0, a = _unpack(_half_topk_bitonic(q_ptr, keys_ptr, offs_t, mask_t, h, 0, H, N_KEYS, DK, K_PAD, BLOCK_T,
                                       BLOCK_N, DK_PAD, PRECISION))
    v1, b = _unpack(_half_topk_bitonic(q_ptr, keys_ptr, offs_t, mask_t, h, 1, H, N_KEYS, DK, K_PAD, BLOCK_T,
                                       BLOCK_N, DK_PAD, PRECISION))
    # the K_PAD² candidate sums; those with a -inf half lose to every real pair (there are k² >= K real ones)
    sums = tl.reshape(v0[:, :, None] + v1[:, None, :], [BLOCK_T, K_PAD * K_PAD])
    ids = tl.reshape(a[:, :, None] * N_KEYS + b[:, None, :], [BLOCK_T, K_PAD * K_PAD])  # N < 2^31
    out_v, out_i = _unpack(tl.topk(_pack(sums, ids), K_PAD, dim=1))
    out = (offs_t.to(tl.int64)[:, None] * H + h) * K + tl.arange(0, K_PAD)[None, :]
    store = mask_t[:, None] & (tl.arange(0, K_PAD) < K)[None, :]
    tl.store(scores_ptr + out, out_v, mask=store)
    tl.store(ids_ptr + out, out_i.to(tl.int64), mask=store)


@triton.jit
def _topk_backward_kernel(q_ptr, keys_ptr, ids_ptr, grad_ptr, dq_ptr, dkeys_ptr, T, H, N_KEYS, DK,
                          K: tl.constexpr, K_PAD: tl.constexpr, DK_PAD: tl.constexpr, BLOCK_T: tl.constexpr):
    """dq (T, H, 2, DK) and float32 dkeys (H, 2, N_KEYS, DK) += for grad (T, H, K) of the scores of ``ids``;
    grid (cdiv(T, BLOCK_T), H)."""
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_t = offs_t < T
    h = tl.program_id(1)
    offs_k = tl.arange(0, K_PAD)
    offs_d = tl.arange(0, DK_PAD)
    mask_d = offs_d < DK
    picks = mask_t[:, None] & (offs_k < K)[None, :]
    at = (offs_t.to(tl.int64)[:, None] * H + h) * K + offs_k[None, :]
    ids = tl.load(ids_ptr + at, mask=picks, other=0)
    g = tl.load(grad_ptr + at, mask=picks, other=0.0).to(tl.float32)
    full = picks[:, :, None] & mask_d[None, None, :]
    for c in tl.static_range(2):
        if c == 0:
            sub = ids // N_KEYS
        else:
            sub = ids % N_KEYS
        rows = (h * 2 + c) * N_KEYS + sub  # (BLOCK_T, K_PAD) rows of the flattened (H·2·N_KEYS, DK) keys
        keys = tl.load(keys_ptr + rows[:, :, None] * DK + offs_d[None, None, :], mask=full, other=0.0)
        dq = tl.sum(g[:, :, None] * keys.to(tl.float32), axis=1)
        q_at = ((offs_t.to(tl.int64) * H + h) * 2 + c)[:, None] * DK + offs_d[None, :]
        q_mask = mask_t[:, None] & mask_d[None, :]
        tl.store(dq_ptr + q_at, dq.to(dq_ptr.dtype.element_ty), mask=q_mask)
        q = tl.load(q_ptr + q_at, mask=q_mask, other=0.0).to(tl.float32)
        tl.atomic_add(dkeys_ptr + rows[:, :, None] * DK + offs_d[None, None, :], g[:, :, None] * q[:, None, :],
                      mask=full, sem="relaxed")  # a sum read after the kernel: no ordering needed


@triton.jit
def _topk_backward_reduced_kernel(q_ptr, keys_ptr, ids_ptr, grad_ptr, dq_ptr, dkeys_ptr, T, H, N_KEYS, DK,
                                  K: tl.constexpr, N_PAD: tl.constexpr, DK_PAD: tl.constexpr,
                                  BLOCK_T: tl.constexpr):
    """As ``_topk_backward_kernel`` for ``N_KEYS <= N_PAD`` sub-keys, the picks of the token block summed per
    sub-key before the atomics (see the module docstring); grid (cdiv(T, BLOCK_T), H)."""
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_t = offs_t < T
    h = tl.program_id(1)
    offs_n = tl.arange(0, N_PAD)
    mask_n = offs_n < N_KEYS
    offs_d = tl.arange(0, DK_PAD)
    mask_d = offs_d < DK
    at = (offs_t.to(tl.int64) * H + h) * K
    key_mask = mask_n[:, None] & mask_d[None, :]
    q_mask = mask_t[:, None] & mask_d[None, :]
    for c in tl.static_range(2):
        a = tl.zeros([N_PAD, BLOCK_T], tl.float32)  # A[n, t]: the weights of token t's picks of sub-key n
        for j in range(K):
            pick = tl.load(ids_ptr + at + j, mask=mask_t, other=0).to(tl.int32)  # ids < N < 2^31
            if c == 0:
                sub = pick // N_KEYS
            else:
                sub = pick % N_KEYS
            g = tl.load(grad_ptr + at + j, mask=mask_t, other=0.0).to(tl.float32)
            a += tl.where(offs_n[:, None] == sub[None, :], g[None, :], 0.0)
        rows = (h * 2 + c) * N_KEYS + offs_n
        keys = tl.load(keys_ptr + rows[:, None] * DK + offs_d[None, :], mask=key_mask, other=0.0).to(tl.float32)
        q_at = ((offs_t.to(tl.int64) * H + h) * 2 + c)[:, None] * DK + offs_d[None, :]
        dq = tl.dot(tl.trans(a), keys, input_precision="tf32x3")  # (BLOCK_T, DK_PAD)
        tl.store(dq_ptr + q_at, dq.to(dq_ptr.dtype.element_ty), mask=q_mask)
        q = tl.load(q_ptr + q_at, mask=q_mask, other=0.0).to(tl.float32)
        tl.atomic_add(dkeys_ptr + rows[:, None] * DK + offs_d[None, :], tl.dot(a, q, input_precision="tf32x3"),
                      mask=key_mask, sem="relaxed")


def _pad(n: int, least: int = 1) -> int:
    return max(least, triton.next_power_of_2(n))


def _topk_forward_fake(query: torch.Tensor, sub_keys: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    T, H = query.shape[:2]
    return query.new_empty(T, H, k, dtype=torch.float32), query.new_empty(T, H, k, dtype=torch.int64)


def forward_kind(n: int) -> str:
    """The forward :func:`topk_forward` runs for tables of ``n`` sub-keys per half: :data:`FORWARD`, or under
    ``"auto"`` ``"bitonic"`` up to :data:`BITONIC_MAX_KEYS` sub-keys and ``"insertion"`` above."""
    if FORWARD == "auto":
        return "bitonic" if n <= BITONIC_MAX_KEYS else "insertion"
    require(FORWARD in FORWARDS, "FORWARD", FORWARD, f"'auto' or one of {FORWARDS}")
    return FORWARD


@opaque_to_compile("product_key_topk_forward", _topk_forward_fake)
def topk_forward(query: torch.Tensor, sub_keys: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward kernel: query (T, H, 2, dk), sub_keys (H, 2, n, dk) contiguous -> scores (T, H, k) float32,
    ids (T, H, k) int64."""
    T, H, _, dk = query.shape
    n = sub_keys.shape[2]
    scores = poisoned_empty(T, H, k, dtype=torch.float32, device=query.device)
    ids = poisoned_empty(T, H, k, dtype=torch.int64, device=query.device)
    forward = forward_kind(n)
    if T:
        precision = "ieee" if query.dtype == torch.float32 else "tf32"
        grid = lambda meta: (triton.cdiv(T, meta["BLOCK_T"]), H)  # noqa: E731
        if forward == "bitonic":  # chunks of the sub-keys up to 128 wide, at least K_PAD (what tl.topk keeps)
            k_pad = _pad(k, 2)
            _topk_forward_bitonic_kernel[grid](query, sub_keys, scores, ids, T, H, n, dk, K=k, K_PAD=k_pad,
                                               DK_PAD=_pad(dk, 16), PRECISION=precision,
                                               BLOCK_N=max(k_pad, min(128, _pad(n, 16))))
        else:
            _topk_forward_kernel[grid](query, sub_keys, scores, ids, T, H, n, dk, K=k, K_PAD=_pad(k),
                                       DK_PAD=_pad(dk, 16), PRECISION=precision)
    return scores, ids


def _topk_backward_fake(query: torch.Tensor, sub_keys: torch.Tensor, ids: torch.Tensor,
                        grad_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(query), torch.empty_like(sub_keys)


@opaque_to_compile("product_key_topk_backward", _topk_backward_fake)
def topk_backward(query: torch.Tensor, sub_keys: torch.Tensor, ids: torch.Tensor,
                  grad_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The backward kernel: query, sub_keys, ids as :func:`topk_forward`, grad_scores (T, H, k) contiguous ->
    (grad_query, grad_sub_keys) in the dtypes of query and sub_keys."""
    T, H, _, dk = query.shape
    n = sub_keys.shape[2]
    k = ids.shape[-1]
    small = _pad(n, 16) <= SMALL_TABLE_KEYS
    if SMALL_TABLE_BACKWARD not in SMALL_TABLE_BACKWARDS:
        require(False, "SMALL_TABLE_BACKWARD", SMALL_TABLE_BACKWARD, f"one of {SMALL_TABLE_BACKWARDS}")
    grad_query = poisoned_empty(*query.shape, dtype=query.dtype, device=query.device)
    grad_keys = torch.zeros(sub_keys.shape, dtype=torch.float32, device=query.device)
    warps = 1 if interpreting() else 4
    if T and small and SMALL_TABLE_BACKWARD == "reduced":
        n_pad, dk_pad = _pad(n, 16), _pad(dk, 16)
        block_t = 16 if interpreting() else max(16, min(64, REDUCED_TILE // n_pad))
        _topk_backward_reduced_kernel[(triton.cdiv(T, block_t), H)](
            query, sub_keys, ids, grad_scores, grad_query, grad_keys, T, H, n, dk,
            K=k, N_PAD=n_pad, DK_PAD=dk_pad, BLOCK_T=block_t, num_warps=warps)
    elif T:
        k_pad, dk_pad = _pad(k), _pad(dk, 16)
        block_t = max(1, min(32, 4096 // (k_pad * dk_pad)))
        _topk_backward_kernel[(triton.cdiv(T, block_t), H)](
            query, sub_keys, ids, grad_scores, grad_query, grad_keys, T, H, n, dk,
            K=k, K_PAD=k_pad, DK_PAD=dk_pad, BLOCK_T=block_t, num_warps=warps)
    return grad_query, grad_keys.to(sub_keys.dtype)


class ProductKeyTopK(torch.autograd.Function):
    """query (T, H, 2, dk), sub_keys (H, 2, n, dk) contiguous -> scores (T, H, k) float32, ids (T, H, k) int64;
    differentiable in query and sub_keys through the scores."""

    @staticmethod
    def forward(ctx, query, sub_keys, k):
        scores, ids = topk_forward(query, sub_keys, k)
        ctx.save_for_backward(query, sub_keys, ids)
        ctx.mark_non_differentiable(ids)
        return scores, ids

    @staticmethod
    def backward(ctx, grad_scores, _grad_ids):
        query, sub_keys, ids = ctx.saved_tensors
        grad_query, grad_keys = topk_backward(query, sub_keys, ids, grad_scores.contiguous())
        return grad_query, grad_keys, None


def product_key_topk(query: torch.Tensor, sub_keys: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """query (..., H, 2, dk), sub_keys (H, 2, n, dk) float32/bf16/fp16 -> scores (..., H, k) float32 descending,
    ids (..., H, k) int64; ``k <= 32`` (registers) and ``N < 2^31``."""
    lead = query.shape[:-3]
    H, _, n, dk = sub_keys.shape
    flat = query.reshape(-1, H, 2, dk).contiguous()
    scores, ids = ProductKeyTopK.apply(flat, sub_keys.contiguous(), k)
    return scores.reshape(*lead, H, k), ids.reshape(*lead, H, k)
