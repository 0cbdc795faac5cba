"""The windowed DMA path on FlexAttention over gathered lists (ops/dma/windowed_flex.py) on the CPU: its block mask
tile by tile against the exact kept pairs, the forward (eager Flex) against the float64 oracle, and the whole
autograd path (gathers, bias gradient by column sums) with a dense stand-in for Flex's q/k/v part, which has no CPU
backward. The compiled path runs on the GPU in test_dma_cuda.py (test_dma_windowed_flex_cuda)."""
import math

import pytest
import torch
from dma_packing import assert_gradients_match_oracle, dense_flex_stand_in, documents, random_inputs

from conftest import rel_err
from wonderful_matrices.ops.dma import biased_causal, windowed_flex
from wonderful_matrices.ops.dma.naive import dynamic_mask_attention_naive
from wonderful_matrices.ops.dma.windowed_kernels import select

CASES = [  # b, lq, lk, hq, hkv, d, window, block, document lengths per row
    (2, 300, 300, 4, 2, 16, 64, 128, None),
    (1, 200, 333, 2, 1, 16, 37, 128, None),
    (1, 700, 700, 2, 2, 32, 100, 256, None),
    (1, 150, 150, 2, 1, 16, 1, 128, None),
    (2, 300, 300, 4, 2, 16, 64, 128, [[100, 1, 10, 189], [300]]),
    (1, 520, 520, 2, 2, 16, 200, 128, None),
    (1, 1500, 1500, 2, 1, 16, 384, 256, None),  # carried prefixes of several whole tiles
]


def _inputs(b, lq, lk, hq, hkv, d, lengths):
    torch.manual_seed(lq * 7 + lk)
    q, k, v, bias = random_inputs(b, lk, hq, hkv, d)
    seq_idx = documents(lengths)[0] if lengths else None
    return q[:, lk - lq:].contiguous(), k, v, bias, seq_idx


def _gathered(q, k, v, bias, window, block, seq_idx):
    """The block mask of the call and the tensors it is built from, as dynamic_mask_attention_windowed_flex makes
    them."""
    b, lq, hq, _ = q.shape
    lk, hkv = k.shape[1], k.shape[2]
    drop, keys, ends, _ = select(bias, lq, window, block, seq_idx)
    nb, listed = keys.shape[1:]
    width = -(-listed // biased_causal.TILE) * biased_causal.TILE
    used = torch.arange(width) < ends[..., -1:]
    index = torch.nn.functional.pad(keys.long(), (0, width - listed)) * used
    slot_drop = drop.long().gather(1, index.view(b * hkv, -1)).view_as(index) * used
    index, slot_drop = (t.view(b, hkv, nb, width).transpose(1, 2) for t in (index, slot_drop))
    p0 = lk - lq + torch.arange(nb) * block
    return windowed_flex.list_block_mask(index, slot_drop, p0, block, hq // hkv), index, slot_drop, p0


def _tiles(num, indices, nq, nk):
    """(B, H, nq, nk) bool: the tiles a (count, indices) pair of a block mask lists."""
    B, H = num.shape[:2]
    listed = torch.zeros(B, H, nq, nk, dtype=torch.bool)
    for bi in range(B):
        for h in range(H):
            for m in range(nq):
                listed[bi, h, m, indices[bi, h, m, : num[bi, h, m]].long()] = True
    return listed


@pytest.mark.parametrize("b,lq,lk,hq,hkv,d,window,block,lengths", CASES)
def test_block_mask_lists_every_kept_pair_and_full_tiles_are_full(b, lq, lk, hq, hkv, d, window, block, lengths):
    q, k, v, bias, seq_idx = _inputs(b, lq, lk, hq, hkv, d, lengths)
    mask, index, slot_drop, p0 = _gathered(q, k, v, bias, window, block, seq_idx)
    t = biased_causal.TILE
    nq, nk = block // t, index.shape[-1] // t
    partial = _tiles(mask.kv_num_blocks, mask.kv_indices, nq, nk)
    full = _tiles(mask.full_kv_num_blocks, mask.full_kv_indices, nq, nk)
    assert not (partial & full).any()
    # the exact kept pairs of each (block, query head): query position p keeps slot c when j_c <= p < drop_c
    group = hq // hkv
    p = (p0[:, None] + torch.arange(block))[None, :, None, :, None]  # (1, nb, 1, block, 1)
    keys = index.repeat_interleave(group, 2)[:, :, :, None, :]  # (b, nb, hq, 1, W)
    drops = slot_drop.repeat_interleave(group, 2)[:, :, :, None, :]
    kept = ((keys <= p) & (p < drops)).flatten(0, 1)  # (b · nb, hq, block, W)
    assert torch.equal(kept, mask.mask_mod(*(torch.arange(n).view(*[-1 if i == a else 1 for i in range(4)])
                                             for a, n in enumerate(kept.shape))))
    tiled = kept.view(*kept.shape[:2], nq, t, nk, t)
    real = (p0[:, None] + torch.arange(block) < lk).repeat(b, 1).view(-1, 1, nq, t)  # rows past lk: anything goes
    any_pair = tiled.any(-1).any(3)
    all_pairs = (tiled | ~real[..., None, None]).all(-1).all(3)
    assert not (any_pair & ~(partial | full)).any()  # every tile with a kept pair is listed
    assert not (full & ~all_pairs).any()  # a full tile has every pair kept (its mask is not evaluated)
    # no tile of only unused slots (past the list's end) is visited
    unused = (slot_drop == 0).repeat_interleave(group, 2).flatten(0, 1).view(b * slot_drop.shape[1], hq, nk, t)
    assert not ((partial | full) & unused.all(-1)[:, :, None, :]).any()


@pytest.mark.parametrize("b,lq,lk,hq,hkv,d,window,block,lengths", CASES)
def test_eager_forward_matches_oracle(b, lq, lk, hq, hkv, d, window, block, lengths):
    q, k, v, bias, seq_idx = _inputs(b, lq, lk, hq, hkv, d, lengths)
    scale = 1 / math.sqrt(d)
    out = windowed_flex.dynamic_mask_attention_windowed_flex(q, k, v, bias, window, scale, seq_idx, block,
                                                             compiled=False)
    ref = dynamic_mask_attention_naive(*(t.double() for t in (q, k, v, bias)), window, True, scale, seq_idx)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert rel_err(out, ref) < 1e-5


@pytest.mark.parametrize("b,lq,lk,hq,hkv,d,window,block,lengths", [CASES[0], CASES[1], CASES[4]])
def test_gradients_end_to_end_with_a_dense_stand_in(b, lq, lk, hq, hkv, d, window, block, lengths, monkeypatch):
    """Every gradient through the gathers (summed back per key in float32), the q/k/v backward (a dense stand-in
    for Flex's) and the bias gradient by column sums (eager Flex), against the float64 oracle."""
    monkeypatch.setattr(biased_causal, "_attend", dense_flex_stand_in)
    q, k, v, bias, seq_idx = _inputs(b, lq, lk, hq, hkv, d, lengths)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, bias)]
    out = windowed_flex.dynamic_mask_attention_windowed_flex(*leaves, window, 0.25, seq_idx, block, compiled=False)
    ref_leaves = [t.double().requires_grad_() for t in (q, k, v, bias)]
    ref = dynamic_mask_attention_naive(*ref_leaves, window, True, 0.25, seq_idx)
    assert_gradients_match_oracle(out, leaves, ref, ref_leaves, bias)
