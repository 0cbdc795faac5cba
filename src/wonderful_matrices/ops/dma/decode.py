"""One DMA decoding step (a single new token per batch row) as two Triton launches, on a preallocated cache.

The cache is a set of buffers ``key, value (b, cap, hkv, d)``, ``bias (b, cap, hkv)`` float32 (``-inf`` = empty
or padded), ``position (b, cap, hkv)`` int64, of which the first ``n`` slots are in use. Two modes:

* ``evict=True`` (a window ``w = n``): the new key joins the ``n`` cached ones and the lowest ranked of the
  ``n + 1`` — smallest bias, ties to the earliest position, then to the lowest slot, the new key counting as
  slot ``n`` — is dropped: the new key takes its slot (or is itself dropped). The query attends to the ``n``
  slots after that replacement (so it sees itself unless it was dropped). This is exactly the torch path of
  :class:`.cache.DecodeStep` (the torch step).
* ``evict=False`` (no window): the new key is appended at slot ``n`` (``cap >= n + 1``) and the query attends to
  the ``n + 1`` slots.

Launch 1, grid ``(b·hkv, splits)`` (split-K flash decoding): every program of a (batch row, KV head) scans the
``n`` cached biases/positions and finds the slot to replace (the same answer in every program: the scan is
cheap next to the keys and avoids a third launch), then attends all query heads of the group to its own tile of
slots, with the replaced slot read from the new key instead of the cache; it writes an unnormalised partial
output, its running max and sum (float32) to a workspace. Launch 2, grid ``(b·hq,)``: combines the partials of
one query head into its output (zeros when no slot is attendable) and, in the program of the group's first
query head, writes the new key/value/bias/position into the chosen slot — after launch 1 has read the cache,
so no program ever reads a half-updated cache.

The cache is read in its own dtype; the products run on the tensor cores in that dtype (IEEE float32 for a
float32 cache), logits, softmax and the value sums accumulate in float32 (probabilities are rounded to the
cache dtype for the value product, as in flash attention);
no host synchronisation, no allocation besides the output once the workspace exists (CUDA-graph friendly).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..triton_utils import cdiv, dot_block, poisoned_empty, pow2_at_least

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256
TARGET_PROGRAMS = 512  # about four programs per SM of an H100/H200 for the attention launch


@triton.jit(do_not_specialize=["n"])
def _attend_kernel(q_ptr, kn_ptr, vn_ptr, bn_ptr, pn_ptr, k_ptr, v_ptr, b_ptr, p_ptr,
                   acc_ptr, m_ptr, l_ptr, drop_ptr,
                   sqb, sqh, snkb, snkh, snvb, snvh, snbb, snbh, snpb, snph,
                   skb, skl, skh, svb, svl, svh, sbb, sbl, sbh, spb, spl, sph,
                   n, hkv, group, tile, max_splits, scale,
                   EVICT: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
                   BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr):
    row = tl.program_id(0)
    split = tl.program_id(1)
    bi = (row // hkv).to(tl.int64)
    g = row % hkv
    new_bias = tl.load(bn_ptr + bi * snbb + g * snbh).to(tl.float32)
    new_pos = tl.load(pn_ptr + bi * snpb + g * snph).to(tl.int64)
    if EVICT:
        # Lexicographic minimum of (bias, position, slot) over the n cached slots: each lane keeps the best of
        # the slots it visits (later slots replace only when strictly lower), then one reduction over lanes.
        r = tl.arange(0, BLOCK_R)
        best_b = tl.full((BLOCK_R,), float("inf"), tl.float32)
        best_p = tl.full((BLOCK_R,), 9223372036854775807, tl.int64)
        best_i = tl.full((BLOCK_R,), 2147483647, tl.int32)
        for s0 in range(0, n, BLOCK_R):
            s = s0 + r
            smask = s < n
            cb = tl.load(b_ptr + bi * sbb + s * sbl + g * sbh, mask=smask, other=float("inf")).to(tl.float32)
            cp = tl.load(p_ptr + bi * spb + s * spl + g * sph, mask=smask, other=9223372036854775807).to(tl.int64)
            better = smask & ((cb < best_b) | ((cb == best_b) & (cp < best_p)))
            best_b = tl.where(better, cb, best_b)
            best_p = tl.where(better, cp, best_p)
            best_i = tl.where(better, s, best_i)
        min_b = tl.min(best_b, 0)
        min_p = tl.min(tl.where(best_b == min_b, best_p, 9223372036854775807), 0)
        min_i = tl.min(tl.where((best_b == min_b) & (best_p == min_p), best_i, 2147483647), 0)
        new_lowest = (new_bias < min_b) | ((new_bias == min_b) & (new_pos < min_p))
        drop = tl.where(new_lowest, n, min_i)
        n_att = n
    else:
        drop = n
        n_att = n + 1
    if split == 0:
        tl.store(drop_ptr + row, drop)
    gg = tl.arange(0, BLOCK_G)
    gmask = gg < group
    h = g * group + gg
    dd = tl.arange(0, BLOCK_D)
    dmask = dd < HEAD_DIM
    q = tl.load(q_ptr + bi * sqb + h[:, None] * sqh + dd[None, :], mask=gmask[:, None] & dmask[None, :],
                other=0.0).to(k_ptr.dtype.element_ty)
    k_new = tl.load(kn_ptr + bi * snkb + g * snkh + dd, mask=dmask, other=0.0).to(k_ptr.dtype.element_ty)
    v_new = tl.load(vn_ptr + bi * snvb + g * snvh + dd, mask=dmask, other=0.0).to(v_ptr.dtype.element_ty)
    m_i = tl.full((BLOCK_G,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_G,), tl.float32)
    acc = tl.zeros((BLOCK_G, BLOCK_D), tl.float32)
    start = split * tile
    stop = tl.minimum(start + tile, n_att)
    for c0 in range(start, stop, BLOCK_N):
        c = (c0 + tl.arange(0, BLOCK_N)).to(tl.int64)  # slot offsets pass 2**31 at ~1M slots of 16 × 128
        cmask = c < stop
        is_new = c == drop
        lmask = cmask & ~is_new  # the replaced slot (or, appending, the slot past the cache) is not read
        k = tl.load(k_ptr + bi * skb + c[:, None] * skl + g * skh + dd[None, :],
                    mask=lmask[:, None] & dmask[None, :], other=0.0)
        v = tl.load(v_ptr + bi * svb + c[:, None] * svl + g * svh + dd[None, :],
                    mask=lmask[:, None] & dmask[None, :], other=0.0)
        kb = tl.load(b_ptr + bi * sbb + c * sbl + g * sbh, mask=lmask, other=float("-inf")).to(tl.float32)
        k = tl.where(is_new[:, None], k_new[None, :], k)
        v = tl.where(is_new[:, None], v_new[None, :], v)
        kb = tl.where(is_new & cmask, new_bias, kb)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale + kb[None, :]
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    out_row = (bi * hkv * group + h) * max_splits + split
    tl.store(acc_ptr + out_row[:, None] * HEAD_DIM + dd[None, :], acc, mask=gmask[:, None] & dmask[None, :])
    tl.store(m_ptr + out_row, m_i, mask=gmask)
    tl.store(l_ptr + out_row, l_i, mask=gmask)


@triton.jit(do_not_specialize=["n_att"])
def _combine_kernel(acc_ptr, m_ptr, l_ptr, drop_ptr, out_ptr, kn_ptr, vn_ptr, bn_ptr, pn_ptr,
                    k_ptr, v_ptr, b_ptr, p_ptr,
                    sob, soh, snkb, snkh, snvb, snvh, snbb, snbh, snpb, snph,
                    skb, skl, skh, svb, svl, svh, sbb, sbl, sbh, spb, spl, sph,
                    n_att, hq, group, splits, max_splits,
                    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr):
    bh = tl.program_id(0)
    bi = (bh // hq).to(tl.int64)
    h = bh % hq
    g = h // group
    ss = tl.arange(0, BLOCK_S)
    smask = ss < splits
    dd = tl.arange(0, BLOCK_D)
    dmask = dd < HEAD_DIM
    base = bh.to(tl.int64) * max_splits
    m = tl.load(m_ptr + base + ss, mask=smask, other=float("-inf"))
    l = tl.load(l_ptr + base + ss, mask=smask, other=0.0)
    m_max = tl.max(m, 0)
    weight = tl.exp(m - tl.where(m_max == float("-inf"), 0.0, m_max))
    total = tl.sum(weight * l, 0)
    acc = tl.load(acc_ptr + (base + ss[:, None]) * HEAD_DIM + dd[None, :], mask=smask[:, None] & dmask[None, :],
                  other=0.0)
    out = tl.sum(weight[:, None] * acc, 0) / tl.where(total == 0.0, 1.0, total)
    tl.store(out_ptr + bi * sob + h * soh + dd, out.to(out_ptr.dtype.element_ty), mask=dmask)
    # The group's first query head writes the new key into its slot (launch 1 has read the cache by now).
    drop = tl.load(drop_ptr + bi * (hq // group) + g).to(tl.int64)
    write = (h % group == 0) & (drop < n_att)
    kn = tl.load(kn_ptr + bi * snkb + g * snkh + dd, mask=dmask, other=0.0)
    vn = tl.load(vn_ptr + bi * snvb + g * snvh + dd, mask=dmask, other=0.0)
    tl.store(k_ptr + bi * skb + drop * skl + g * skh + dd, kn.to(k_ptr.dtype.element_ty), mask=dmask & write)
    tl.store(v_ptr + bi * svb + drop * svl + g * svh + dd, vn.to(v_ptr.dtype.element_ty), mask=dmask & write)
    bn = tl.load(bn_ptr + bi * snbb + g * snbh)
    pn = tl.load(pn_ptr + bi * snpb + g * snph)
    tl.store(b_ptr + bi * sbb + drop * sbl + g * sbh, bn.to(b_ptr.dtype.element_ty), mask=write)
    tl.store(p_ptr + bi * spb + drop * spl + g * sph, pn.to(p_ptr.dtype.element_ty), mask=write)


def max_splits_for(rows: int) -> int:
    """Most key splits per (batch row, KV head) for ``rows = b·hkv``: about :data:`TARGET_PROGRAMS` programs."""
    return max(1, min(64, TARGET_PROGRAMS // rows))


def block_n_for(dtype: torch.dtype, head_dim: int) -> int:
    """Key tile of the attention launch: 64 keys of 2-byte dtypes up to ``head_dim`` 128, else smaller (the
    float32 IEEE products need much more shared memory: about 105 KB at 32 × 128 on sm_90)."""
    wide = head_dim > 128
    if dtype == torch.float32:
        return 16 if wide else 32
    return 32 if wide else 64


def decode_step(q: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor,
                position: torch.Tensor, key_buf: torch.Tensor, value_buf: torch.Tensor, bias_buf: torch.Tensor,
                position_buf: torch.Tensor, n: int, evict: bool, scale: float, workspace: dict,
                block_n: int | None = None, max_splits: int | None = None) -> torch.Tensor:
    """One decoding step on a preallocated cache, updated in place (see the module docstring).

    Args:
        q: ``(b, 1, hq, d)`` the new query (post-RoPE); ``key, value (b, 1, hkv, d)`` the new key (post-RoPE)
            and value, in the cache's dtype; ``bias (b, 1, hkv)`` float32, ``position (b, 1, hkv)`` int64.
        key_buf, value_buf: ``(b, cap, hkv, d)`` (last dim contiguous); ``bias_buf (b, cap, hkv)`` float32,
            ``position_buf (b, cap, hkv)`` int64; slots ``[0, n)`` hold the cache.
        n: slots in use (``>= 1`` when ``evict``); ``cap >= n + 1`` when not ``evict``.
        evict: True = bounded cache of ``n`` slots (replace the lowest ranked), False = append at slot ``n``.
        scale: logit scale.
        workspace: a dict this function fills with float32 scratch buffers on first use and reuses while the
            shapes stay the same (keep one per layer).
        block_n: key tile, a power of two >= 16 (default :func:`block_n_for`); max_splits: cap on the key
            splits (default :func:`max_splits_for`).

    Returns:
        ``(b, 1, hq, d)`` in ``q``'s dtype; zeros for a (row, head) with no attendable slot.
    """
    q, key, value = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, key, value))
    b, _, hq, d = q.shape
    hkv = key_buf.shape[2]
    group = hq // hkv
    rows = b * hkv
    limit = max_splits or max_splits_for(rows)
    block_n = block_n or block_n_for(key_buf.dtype, d)
    n_att = n if evict else n + 1
    tiles = cdiv(n_att, block_n)
    tile = cdiv(tiles, min(limit, tiles)) * block_n
    splits = cdiv(n_att, tile)
    spec = (q.device, b, hq, hkv, d, limit)
    if workspace.get("spec") != spec:
        workspace.clear()
        workspace.update(spec=spec, acc=torch.empty(b * hq * limit * d, device=q.device, dtype=torch.float32),
                         m=torch.empty(b * hq * limit, device=q.device, dtype=torch.float32),
                         l=torch.empty(b * hq * limit, device=q.device, dtype=torch.float32),
                         drop=torch.empty(rows, device=q.device, dtype=torch.int32))
    acc, m, l, drop = workspace["acc"], workspace["m"], workspace["l"], workspace["drop"]
    out = poisoned_empty(b, 1, hq, d, dtype=q.dtype, device=q.device)
    block_d = dot_block(d)
    new_strides = (key.stride(0), key.stride(2), value.stride(0), value.stride(2), bias.stride(0), bias.stride(2),
                   position.stride(0), position.stride(2))
    buf_strides = (key_buf.stride(0), key_buf.stride(1), key_buf.stride(2), value_buf.stride(0),
                   value_buf.stride(1), value_buf.stride(2), bias_buf.stride(0), bias_buf.stride(1),
                   bias_buf.stride(2), position_buf.stride(0), position_buf.stride(1), position_buf.stride(2))
    _attend_kernel.run(  # (decoding path: launch convention of ops/triton_utils.py)
        q, key, value, bias, position, key_buf, value_buf, bias_buf, position_buf, acc, m, l, drop,
        q.stride(0), q.stride(2), *new_strides, *buf_strides, n, hkv, group, tile, limit, scale,
        grid=(rows, splits), warmup=False, EVICT=evict, BLOCK_G=dot_block(group), BLOCK_N=block_n,
        BLOCK_R=max(16, min(1024, pow2_at_least(n))) if evict else 16,  # (unused when appending)
        BLOCK_D=block_d, HEAD_DIM=d,
        PRECISION="ieee" if key_buf.dtype == torch.float32 else None, num_warps=4)
    _combine_kernel.run(
        acc, m, l, drop, out, key, value, bias, position, key_buf, value_buf, bias_buf, position_buf,
        out.stride(0), out.stride(2), *new_strides, *buf_strides, n_att, hq, group, splits, limit,
        grid=(b * hq,), warmup=False, BLOCK_S=max(2, pow2_at_least(limit)), BLOCK_D=block_d, HEAD_DIM=d, num_warps=4)
    return out
