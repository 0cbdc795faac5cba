"""Shared checks of the DMA tests: packed rows (``seq_idx``) give every document what it gets alone; the Flex path's
autograd with a dense stand-in for Flex (which has no CPU backward), every gradient against the float64 oracle."""
import torch

from conftest import rel_err


def documents(lengths_per_row, ids_per_row=None):
    """``seq_idx (b, l)`` int64 from per-row document lengths (ids 0, 1, … or the given ones) and the
    ``(row, first, end)`` spans."""
    rows, spans = [], []
    for r, lengths in enumerate(lengths_per_row):
        ids = ids_per_row[r] if ids_per_row is not None else range(len(lengths))
        rows.append(torch.cat([torch.full((n,), i) for n, i in zip(lengths, ids)]))
        first = 0
        for n in lengths:
            spans.append((r, first, first + n))
            first += n
    return torch.stack(rows), spans


def random_inputs(b, l, hq, hkv, d, dtype=torch.float32, pad=True):
    q = torch.randn(b, l, hq, d, dtype=dtype)
    k = torch.randn(b, l, hkv, d, dtype=dtype)
    v = torch.randn(b, l, hkv, d, dtype=dtype)
    bias = torch.randn(b, l, hkv, dtype=dtype) * 2
    if pad:  # padded keys: the first key of the row in head 0, and every 7th key of head 1 when there is one
        bias[:, 0, 0] = float("-inf")
        bias[:, 3::7, -1] = float("-inf")
    return q, k, v, bias


def packed_and_alone(attend, q, k, v, bias, seq_idx, spans, weight):
    """``attend(q, k, v, bias, seq_idx)`` over the packed rows and over every document alone (``seq_idx=None``),
    both backpropagated with ``weight``; returns ``(out, grads)`` of each."""
    results = []
    for packed in (True, False):
        leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v, bias)]
        if packed:
            out = attend(*leaves, seq_idx)
        else:
            pieces = {}
            for r, s, e in spans:
                pieces.setdefault(r, []).append(attend(*(t[r:r + 1, s:e] for t in leaves), None))
            out = torch.cat([torch.cat(pieces[r], dim=1) for r in sorted(pieces)], dim=0)
        (out.double() * weight).sum().backward()
        results.append((out.detach(), [t.grad for t in leaves]))
    return results


def assert_packed_equals_alone(attend, q, k, v, bias, seq_idx, spans, tol):
    weight = torch.randn(q.shape, dtype=torch.float64)
    (out, grads), (ref, ref_grads) = packed_and_alone(attend, q, k, v, bias, seq_idx, spans, weight)
    assert not torch.isnan(out).any()
    assert rel_err(out, ref) < tol
    for name, a, r in zip(("q", "k", "v", "bias"), grads, ref_grads):
        assert (a.double() - r.double()).norm().item() <= tol * max(r.double().norm().item(), 1.0), name


def dense_flex_stand_in(q, k, v, bias_rows, block_mask, scale, kernel_options=None, with_lse=False):
    """A differentiable stand-in for ``biased_causal._attend`` on the CPU (where Flex has no backward): the same
    scores and mask (the block mask's ``mask_mod`` over every pair; a row with no kept key outputs zeros), by dense
    torch operations."""
    b, hq, lq, _ = q.shape
    group = hq // k.shape[1]
    lk = k.shape[2]
    keys, values = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    scores = scale * q @ keys.transpose(-1, -2) + bias_rows.repeat_interleave(group, 1)[:, :, None, :lk]
    kept = block_mask.mask_mod(torch.arange(b)[:, None, None, None], torch.arange(hq)[None, :, None, None],
                               torch.arange(lq)[None, None, :, None], torch.arange(lk)[None, None, None, :])
    scores = scores.masked_fill(~kept, float("-inf"))
    out = torch.nan_to_num(torch.softmax(scores, -1)) @ values
    return (out, torch.logsumexp(scores, -1)) if with_lse else out


def assert_gradients_match_oracle(out, leaves, ref, ref_leaves, bias, out_bound=1e-5, grad_bound=1e-4):
    """``out`` (from ``leaves`` q, k, v, bias) against the oracle's ``ref`` (from float64 ``ref_leaves``): the output
    and the gradients of one random output weight; the bias gradient compared at the finite-bias keys only."""
    assert rel_err(out, ref) < out_bound
    weight = torch.randn(ref.shape, dtype=torch.float64)
    got = torch.autograd.grad(out, leaves, weight.to(out.dtype))
    want = torch.autograd.grad(ref, ref_leaves, weight)
    for name, a, r in zip("qkvb", got, want):
        if name == "b":
            a, r = (torch.where(torch.isfinite(bias), x, 0) for x in (a, r))
        assert rel_err(a, r) < grad_bound, name
