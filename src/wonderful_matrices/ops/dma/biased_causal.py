"""Dynamic mask attention without a window on the GPU: causal attention plus a per-key bias, block-sparse.

FlexAttention (PyTorch's compiled attention template) runs it: a ``score_mod`` adds ``bias[b, h // group, j]``
to each logit, and a block mask built here from the causal offset and the documents (``seq_idx``) lists, per
tile of :data:`TILE` queries, the key tiles it needs — "full" tiles (every pair visible: no mask evaluated) and
"partial" ones (the ``mask_mod`` decides per pair). A query tile of one document at positions ``[q0, q1]``
needs key tiles from its document's first key to ``q1``; no ``(l, l)`` tensor is built, the block mask is
``O(b · (l / TILE)²)`` integers, and nothing is compiled for the block mask itself.

Keys with bias ``-inf`` (padding) get :data:`MASKED_BIAS` (finite, so no ``0 · inf`` in the backward); a query
whose visible keys are all padding outputs zeros, as everywhere in this op.

The backward. Flex differentiates a captured buffer by adding every pair's ``dS`` into it: at 16K tokens, 16 heads
× 128, its backward took 12.9 ms against 6.6 ms without a bias gradient (H100, docs/results.md, session 12). So
when the bias needs a gradient, Flex runs the forward alone (its output and log-sum-exp, no graph kept) and the
Triton kernels of :mod:`.biased_causal_kernels` give every gradient — the bias's as the row sums of ``dS`` their
key-major pass holds anyway (16K: forward + backward 1.22× Flex causal, against 1.61× for Flex's q/k/v backward
plus a transposed pass for the bias, session 16). Under ``torch.compile`` tracing and without a bias gradient the
plain Flex call runs. On the CPU (Flex has no backward there) the tests run the kernels in Triton's interpreter
with a dense stand-in for Flex's forward (tests/ops/test_dma_biased_causal_triton.py).
"""
from __future__ import annotations

import collections

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, flex_attention

try:  # torch >= 2.9 (return_lse was deprecated then)
    from torch.nn.attention.flex_attention import AuxRequest
except ImportError:  # pragma: no cover - older torch
    AuxRequest = None

from . import biased_causal_kernels
from .windowed import MASKED_BIAS, attendable_queries

TILE = 128
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
HEAD_DIMS = (16, 32, 64, 128, 256)

# FlexAttention's kernel option that makes Inductor run its main kernel for every query length: below 128 queries it
# would pick the flex-decoding kernel, which with this score_mod and a block mask found no kernel to compile
# ("NoValidChoicesError") for the 100-query documents of a packed row on an H100 (docs/kernels_dma.md).
KERNEL_OPTIONS = {"FORCE_USE_FLEX_ATTENTION": True}


def block_mask_for(lq: int, lk: int, seq_idx: torch.Tensor | None, device: torch.device) -> BlockMask:
    """Block mask of causal attention (queries bottom-right aligned: query ``i`` at key position
    ``i + lk - lq``), restricted to each query's document when ``seq_idx (b, l)`` is given (``lq == lk``).

    Returns a ``BlockMask`` with the batch size of ``seq_idx`` (1 without documents), one head, tiles of
    :data:`TILE`. Its block lists come from :func:`block_lists`, an operator of its own, so that under
    ``torch.compile`` they are computed by ATen's kernels, never by code Inductor generates (see there).
    """
    offset = lk - lq
    nk = -(-lk // TILE)
    lists = block_lists(torch.empty(0, device=device) if seq_idx is None else seq_idx, lq, lk)
    # The kernels evaluate mask_mod on whole tiles, indices up to the next multiple of TILE included (pytorch issue
    # 137801): the document ids it reads are padded to that length (the padded keys are never visible, the padded
    # queries' rows are dropped).
    padded_docs = None if seq_idx is None else padded_document_ids(seq_idx, nk * TILE - lk)

    def mask_mod(bi, h, q_idx, kv_idx):
        visible = q_idx + offset >= kv_idx
        if seq_idx is None:
            return visible
        return visible & (padded_docs[bi, q_idx] == padded_docs[bi, kv_idx])

    return BlockMask(seq_lengths=(lq, lk), kv_num_blocks=lists[0], kv_indices=lists[1], full_kv_num_blocks=lists[2],
                     full_kv_indices=lists[3], q_num_blocks=lists[4], q_indices=lists[5], full_q_num_blocks=lists[6],
                     full_q_indices=lists[7], BLOCK_SIZE=(TILE, TILE), mask_mod=mask_mod)


@torch.library.custom_op("wonderful_matrices::flex_block_lists", mutates_args=())
def block_lists(seq_idx: torch.Tensor, lq: int, lk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                   torch.Tensor, torch.Tensor, torch.Tensor,
                                                                   torch.Tensor, torch.Tensor]:
    """The block lists of :func:`block_mask_for`: seq_idx (b, l) document ids (``lq == lk == l``), or an empty tensor
    on the device for no documents (then batch 1) -> FlexAttention's eight int32 tensors, in the order of
    ``BlockMask``'s arguments: per query tile the partial and the full key tiles, (b, 1, nq) counts and (b, 1, nq, nk)
    indices, and per key tile the query tiles (the transposition, for the backward), (b, 1, nk) and (b, 1, nk, nq).

    An operator of its own so that ``torch.compile`` never generates code for this index arithmetic: with it traced,
    compiled training of packed documents gave wrong losses and infinite gradients on the GPU (torch 2.11 / triton
    3.6; with this attention left out of the compiled graph it matched eager training; the miscompiled operation was
    not pinned down: docs/results.md, session 25). Inside the operator it runs as ATen's kernels, as in eager mode.
    The division below rounds up without a negative dividend: Triton's integer division truncates, and Inductor's
    floor-division rewrite of a negative dividend meets a known miscompilation of signed division in Triton's axis
    analysis.
    """
    nk = -(-lk // TILE)
    offset = lk - lq
    nq = -(-lq // TILE)
    device = seq_idx.device
    q_first = torch.arange(nq, device=device) * TILE  # first and last query of each tile, as key positions
    q_last = (q_first + TILE).clamp_max(lq) - 1 + offset
    q_first = q_first + offset
    if seq_idx.numel() == 0:
        doc_first = torch.zeros(1, nq, dtype=torch.long, device=device)
        one_doc = torch.ones(1, nq, dtype=torch.bool, device=device)
    else:
        docs = seq_idx.contiguous()
        first_of = torch.searchsorted(docs, docs)  # (b, l): first position of each position's document
        doc_first = first_of[:, q_first]
        one_doc = docs[:, q_first] == docs[:, q_last]
    lo = doc_first // TILE  # needed key tiles: [lo, hi]
    hi = (q_last // TILE).expand_as(lo)
    # Full key tiles: inside the tile's one document and at or before every query of the tile.
    full_lo = (doc_first + TILE - 1) // TILE
    full_hi = torch.where(one_doc, (q_first + 1) // TILE - 1, full_lo - 1)  # empty when hi < lo
    full_count = (full_hi - full_lo + 1).clamp_min(0)
    full_hi = full_lo + full_count - 1
    # Partial tiles: [lo, full_lo) and (full_hi, hi], or all of [lo, hi] when there is no full tile.
    before = torch.where(full_count > 0, full_lo - lo, hi - lo + 1)
    after = torch.where(full_count > 0, hi - full_hi, 0)
    slot = torch.arange(nk, device=device)
    partial = torch.where(slot < before[..., None], lo[..., None] + slot,
                          full_hi[..., None] + 1 + slot - before[..., None])
    full = full_lo[..., None] + slot
    count = before + after

    kv = (count.to(torch.int32)[:, None], partial.to(torch.int32).clamp(0, nk - 1)[:, None].contiguous(),
          full_count.to(torch.int32)[:, None], full.to(torch.int32).clamp(0, nk - 1)[:, None].contiguous())
    return kv + _transposed(kv[0], kv[1], nk) + _transposed(kv[2], kv[3], nk)


def _transposed(num: torch.Tensor, indices: torch.Tensor, columns: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Block lists by row, num (b, 1, rows) int32 and indices (b, 1, rows, columns) (entries past num ignored), ->
    the same by column: (b, 1, columns) counts and (b, 1, columns, rows) row indices, ascending. What FlexAttention's
    ``BlockMask.from_kv_blocks`` computes for the backward, without its ``vmap`` (which fails inside an operator
    that compiled code calls)."""
    b, _, rows, _ = indices.shape
    listed = torch.arange(indices.shape[-1], device=indices.device) < num[..., None]
    dense = torch.zeros(b, 1, rows, columns + 1, dtype=torch.int32, device=indices.device)
    dense.scatter_(-1, torch.where(listed, indices.long(), columns), 1)  # unlisted entries go to the extra column
    by_column = dense[..., :columns].transpose(-1, -2)
    order = torch.argsort(by_column, dim=-1, descending=True, stable=True)  # the listed rows first, ascending
    return by_column.sum(-1, dtype=torch.int32), order.to(torch.int32).contiguous()


@block_lists.register_fake
def _(seq_idx, lq, lk):
    b, nq, nk = (1 if seq_idx.numel() == 0 else seq_idx.shape[0]), -(-lq // TILE), -(-lk // TILE)
    new = dict(dtype=torch.int32, device=seq_idx.device)
    return (seq_idx.new_empty(b, 1, nq, **new), seq_idx.new_empty(b, 1, nq, nk, **new),
            seq_idx.new_empty(b, 1, nq, **new), seq_idx.new_empty(b, 1, nq, nk, **new),
            seq_idx.new_empty(b, 1, nk, **new), seq_idx.new_empty(b, 1, nk, nq, **new),
            seq_idx.new_empty(b, 1, nk, **new), seq_idx.new_empty(b, 1, nk, nq, **new))


# Block masks of rows without documents depend only on (lq, lk, device): kept for the CAUSAL_MASKS_KEPT most recently
# used, so a model's layers and steps build each once (~20 small ops and launches a call otherwise)
CAUSAL_MASKS_KEPT = 8
_causal_masks: collections.OrderedDict = collections.OrderedDict()


def causal_block_mask(lq: int, lk: int, device: torch.device) -> BlockMask:
    """:func:`block_mask_for` without documents, built once per ``(lq, lk, device)`` (the last
    :data:`CAUSAL_MASKS_KEPT` kept; built anew, not kept, while ``torch.compile`` traces)."""
    if torch.compiler.is_compiling():
        return block_mask_for(lq, lk, None, device)
    key = (lq, lk, device)
    mask = _causal_masks.get(key)
    if mask is None:
        mask = _causal_masks[key] = block_mask_for(lq, lk, None, device)
        while len(_causal_masks) > CAUSAL_MASKS_KEPT:
            _causal_masks.popitem(last=False)
    else:
        _causal_masks.move_to_end(key)
    return mask


def _flex_with_lse(q, k, v, score_mod, block_mask, scale, enable_gqa, kernel_options):
    """FlexAttention's output and its log-sum-exp (natural log, float32)."""
    if AuxRequest is None:  # pragma: no cover - older torch
        return flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale,
                              enable_gqa=enable_gqa, return_lse=True, kernel_options=kernel_options)
    out, aux = flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale,
                              enable_gqa=enable_gqa, return_aux=AuxRequest(lse=True), kernel_options=kernel_options)
    return out, aux.lse


def _attend(q, k, v, bias_rows, block_mask, scale, kernel_options=None, with_lse=False):
    group = q.shape[1] // k.shape[1]

    def add_bias(score, bi, h, q_idx, kv_idx):
        return score + bias_rows[bi, h // group, kv_idx]

    if with_lse:
        return _flex_with_lse(q, k, v, add_bias, block_mask, scale, True, kernel_options)
    return flex_attention(q, k, v, score_mod=add_bias, block_mask=block_mask, scale=scale, enable_gqa=True,
                          kernel_options=kernel_options)


# torch.compile makes one variant of ``_attend`` per shape, grad mode and mask (with or without documents), and
# after dynamo's default of 8 variants per function it runs the function eagerly — where FlexAttention builds the
# full (b, h, lq, lk) scores: a sweep over four lengths, forward and backward, fills the 8, and a packed row of 16K
# tokens after it then ran out of memory. This many variants stay compiled.
RECOMPILE_LIMIT = 64


def compile_attend(backend: str = "inductor", function=_attend):
    """``function`` (default ``_attend``) under ``torch.compile`` (static shapes, ``backend``), allowed
    :data:`RECOMPILE_LIMIT` variants."""
    return torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT)(
        torch.compile(function, dynamic=False, backend=backend))


_compiled_attend = compile_attend() if torch.cuda.is_available() else None


class _FlexForwardTritonBackward(torch.autograd.Function):
    """Flex's forward (no graph kept for a backward) and the gradients of every input from the Triton kernels of
    :mod:`.biased_causal_kernels` (one key-major pass gives dk, dv and the bias gradient, one query-major pass dq).
    q (b,lq,hq,d), k/v (b,lk,hkv,d), bias_rows (b, hkv, padded lk), keep (b, lq, hq) the queries that see a key
    -> out (b,lq,hq,d)."""

    @staticmethod
    def forward(ctx, q, k, v, bias_rows, keep, block_mask, scale, seq_idx, compiled):
        attend = _compiled_attend if compiled and _compiled_attend is not None else _attend
        with torch.no_grad():
            out, lse = attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), bias_rows, block_mask, scale,
                              KERNEL_OPTIONS, True)
        out = out.transpose(1, 2)
        ctx.save_for_backward(q, k, v, bias_rows, keep, out, lse)
        ctx.scale, ctx.seq_idx = scale, seq_idx
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, bias_rows, keep, out, lse = ctx.saved_tensors
        # a query that sees no key: +inf, so that the kernels give its (zeroed) output's row no probability
        lse = torch.where(keep.transpose(1, 2), lse.float(), float("inf"))
        dq, dk, dv, dbias = biased_causal_kernels.biased_causal_backward(q, k, v, bias_rows, out, lse, dout,
                                                                         ctx.scale, ctx.seq_idx)
        grad_rows = F.pad(dbias, (0, bias_rows.shape[-1] - dbias.shape[-1]))  # the padding keys get none
        return dq, dk, dv, grad_rows, None, None, None, None, None


@torch.library.custom_op("wonderful_matrices::padded_bias_rows", mutates_args=())
def padded_bias_rows(rows: torch.Tensor, extra: int) -> torch.Tensor:
    """rows (b, hkv, lk) -> (b, hkv, lk + extra), contiguous, the new keys :data:`MASKED_BIAS`; differentiable.

    An operator of its own so that Inductor keeps its output a buffer in memory: the ``score_mod`` reads it by key
    index, and Inductor inlined a ``F.pad`` there into FlexAttention's template, whose code generation failed on the
    pad's masked load (torch 2.11 on an H200: ``'function' object has no attribute 'graph'``; on the CPU "no valid
    choices" — docs/results.md, session 15)."""
    return F.pad(rows, (0, extra), value=MASKED_BIAS).contiguous()


@padded_bias_rows.register_fake
def _(rows, extra):
    return rows.new_empty(*rows.shape[:-1], rows.shape[-1] + extra)


def _padded_bias_rows_setup(ctx, inputs, output):
    ctx.keys = inputs[0].shape[-1]


def _padded_bias_rows_backward(ctx, grad):
    return grad[..., :ctx.keys], None


padded_bias_rows.register_autograd(_padded_bias_rows_backward, setup_context=_padded_bias_rows_setup)


@torch.library.custom_op("wonderful_matrices::padded_document_ids", mutates_args=())
def padded_document_ids(seq_idx: torch.Tensor, extra: int) -> torch.Tensor:
    """seq_idx (b, l) -> (b, l + extra), contiguous, the new positions in the last document: the ids the block
    mask's ``mask_mod`` reads, an operator of its own for the reason of :func:`padded_bias_rows` (Inductor inlined
    the ``torch.cat`` that pads them into Flex's template, whose code generation failed on the GPU: docs/results.md,
    session 16)."""
    return torch.cat([seq_idx, seq_idx[:, -1:].expand(-1, extra)], dim=1).contiguous()


@padded_document_ids.register_fake
def _(seq_idx, extra):
    return seq_idx.new_empty(seq_idx.shape[0], seq_idx.shape[1] + extra)


def dynamic_mask_attention_biased_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                                         scale: float, seq_idx: torch.Tensor | None = None,
                                         compiled: bool = True) -> torch.Tensor:
    """Causal DMA without a window: q (b,lq,hq,d), k/v (b,lk,hkv,d), bias (b,lk,hkv), optional seq_idx (b,l)
    -> (b,lq,hq,d) in q's dtype. Gradients reach q, k, v and bias.

    Needs ``q.dtype`` in :data:`DTYPES` and ``d`` in :data:`HEAD_DIMS` (the dispatcher checks). ``compiled``:
    run FlexAttention through ``torch.compile`` (its fast kernels; CUDA) or eagerly (a reference computation
    over all pairs, for tests on the CPU). With a bias gradient the backward runs Triton kernels (a GPU, or
    Triton's interpreter).
    """
    b, lq, hq, d = q.shape
    lk = k.shape[1]
    rows = bias.float() if bias.dtype != torch.float64 else bias
    rows = torch.where(torch.isfinite(rows), rows, MASKED_BIAS).permute(0, 2, 1)  # (b, hkv, lk)
    # padded to whole tiles: the score_mod is evaluated on indices up to the next multiple of TILE (see block_mask_for)
    extra = -(-lk // TILE) * TILE - lk
    rows = padded_bias_rows(rows, extra)
    block_mask = causal_block_mask(lq, lk, q.device) if seq_idx is None else block_mask_for(lq, lk, seq_idx,
                                                                                              q.device)
    keep = attendable_queries(bias, lq, seq_idx)  # (b, lq, hkv)
    keep = keep.repeat_interleave(hq // k.shape[2], dim=2)
    if rows.requires_grad and torch.is_grad_enabled() and not torch.compiler.is_compiling():
        out = _FlexForwardTritonBackward.apply(q, k, v, rows, keep, block_mask, scale, seq_idx, compiled)
    else:
        attend = _compiled_attend if compiled and _compiled_attend is not None else _attend
        out = attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), rows, block_mask, scale,
                     KERNEL_OPTIONS).transpose(1, 2)
    return torch.where(keep[..., None], out, out.new_zeros(())).to(q.dtype)
