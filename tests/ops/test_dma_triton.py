"""The Triton backend of dynamic_mask_attention against the naive oracle, on the CPU under TRITON_INTERPRET=1
(float32, tiny shapes: the interpreter is slow). The same kernels run compiled on a GPU in test_dma_cuda.py.

Triton decides interpreted vs compiled when it is imported, so in a normal test run the one test
``test_interpreted_in_a_subprocess`` reruns this file in a child process with ``TRITON_INTERPRET=1``; there
(``INTERPRETED``) the real tests run and that test is skipped.
"""
import pytest
import torch
from dma_packing import assert_packed_equals_alone, documents, random_inputs

from conftest import interpreted_only, interpreter_child_test, rel_err

pytest.importorskip("triton")

from wonderful_matrices.ops import dynamic_mask_attention
from wonderful_matrices.ops.dma import windowed_kernels as dma_triton
from wonderful_matrices.ops.dma.naive import dynamic_mask_attention_naive

test_interpreted_in_a_subprocess = interpreter_child_test(__file__)


def run_both(b, lq, lk, hq, hkv, d, w, bias_kind, block=None, pad=False):
    q = torch.randn(b, lq, hq, d)
    k = torch.randn(b, lk, hkv, d)
    v = torch.randn(b, lk, hkv, d)
    bias = {"ties": lambda: torch.randint(-2, 2, (b, lk, hkv)).float(), "zero": lambda: torch.zeros(b, lk, hkv),
            "randn": lambda: torch.randn(b, lk, hkv) * 2,
            # the first w keys outrank every later one: kept to the end, and the later keys by no query
            "front": lambda: torch.randn(b, lk, hkv) + torch.where(torch.arange(lk) < w, 10.0, -10.0)[None, :, None],
            }[bias_kind]()
    if pad:  # left padding of row 0 and one padded key in every row
        bias[0, :3] = float("-inf")
        bias[:, lk // 2, 0] = float("-inf")
    weight = torch.randn(b, lq, hq, d, dtype=torch.float64)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v, bias)]
    out = dma_triton.dynamic_mask_attention_triton(*leaves, w, d ** -0.5, block)
    assert out.dtype == torch.float32 and not torch.isnan(out).any()
    (out.double() * weight).sum().backward()
    ref_leaves = [t.double().requires_grad_(True) for t in (q, k, v, bias)]
    ref = dynamic_mask_attention_naive(*ref_leaves, w, True, d ** -0.5)
    (ref * weight).sum().backward()
    assert rel_err(out, ref) < 1e-5
    for name, a, r in zip(("q", "k", "v", "bias"), leaves, ref_leaves):
        # gradients can be exactly zero (w == 1 has no dq/dk): floor the reference norm at 1
        err = (a.grad.double() - r.grad).norm().item() / max(r.grad.norm().item(), 1.0)
        assert err < 1e-5, name


# (b, lq, lk, hq, hkv, d, w, bias, block): GQA, window 1, lq < lk, lengths not a multiple of the tiles, several
# selection blocks of two kernel tiles (64 queries under the interpreter) and one of four, ties, padding.
CASES = [
    (1, 150, 150, 4, 2, 16, 7, "randn", 128, True),
    (2, 70, 70, 2, 1, 8, 1, "ties", 128, False),
    (1, 100, 130, 2, 2, 32, 20, "ties", 128, True),
    (1, 260, 300, 2, 1, 16, 65, "randn", 256, False),
    (1, 140, 140, 1, 1, 16, 3, "zero", 128, False),
    (1, 600, 600, 2, 1, 16, 300, "randn", None, False),  # block_for's default: the window's 256 (block < w, B ~ w)
]


@interpreted_only
@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_triton_matches_oracle(case):
    run_both(*case[:-2], block=case[-2], pad=case[-1])


@interpreted_only
@pytest.mark.parametrize("w", [3, 36])
def test_triton_takes_a_finfo_min_mask(w):
    """test_dma_op.py's finfo.min mask through the windowed kernels: they turned it into -inf (zero outputs where
    the oracle averages the masked keys, wrong gradients); floored, the oracle's outputs and gradients."""
    from test_dma_op import finfo_min_padding_case, grads

    inputs, weight = finfo_min_padding_case()
    out, g = grads(lambda *a: dynamic_mask_attention(*a, keep_window=w, backend="triton"), *inputs, weight)
    ref, g_ref = grads(lambda *a: dynamic_mask_attention_naive(*a, w, True, 8 ** -0.5),
                       *(t.double() for t in inputs), weight)
    assert rel_err(out, ref) < 1e-5
    for name, a, r in zip(("q", "k", "v", "bias"), g, g_ref):
        assert rel_err(a, r) < 1e-5, name


@interpreted_only
def test_triton_tiles_with_an_empty_head_or_an_empty_tail():
    """Query tiles whose list needs the mask everywhere (no carried key outlives the tile: a sliding window
    narrower than the tile, or no carried keys at all) and tiles that need it nowhere (every listed key is kept by
    the whole tile, whole key tiles of them), forward and gradients against the oracle."""
    block = 128
    for lk, w, kind, head_empty, tail_empty in ((256, 32, "zero", True, False), (256, 128, "front", False, True)):
        bias = {"zero": torch.zeros(1, lk, 1),
                "front": torch.where(torch.arange(lk) < w, 10.0, -10.0)[None, :, None]}[kind]
        drop, keys, ends, counts = dma_triton.select(bias, lk, w, block)
        c_head = counts[..., 0] // 64 * 64  # the interpreter's key tile
        assert (c_head[:, 1] == 0).all() if head_empty else (c_head[:, 1] == ends[:, 1]).all() and (c_head > 0).any()
        assert (c_head[:, 0] == 0).all()  # the first block has no carried keys
        torch.manual_seed(lk + w)
        run_both(1, lk, lk, 2, 1, 16, w, kind, block=block)


@interpreted_only
@pytest.mark.parametrize("tiles", [(128, 64), (64, 128), (128, 128)], ids=str)
def test_triton_query_and_key_tiles_of_the_gpu_configurations(monkeypatch, tiles):
    """The forward and dq kernels with the GPU's other tile shapes (under the interpreter the autotuners hold 64 x
    64 only): a 128-query tile spans two LIVE_TILEs (its own keys before its first query end where the LIVE_TILE
    before its first one ends), 128-key tiles round the head and the own keys before the tile to 128 entries.
    Forward and gradients against the oracle: a sliding window (every own key before the tile kept, whole tiles of
    them) and random biases, several query tiles per selection block."""
    import triton

    m, n = tiles
    for kernel in (dma_triton._fwd_kernel, dma_triton._dq_kernel):
        monkeypatch.setattr(kernel, "configs", [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=4,
                                                              num_stages=1)])
    for kind, w in (("zero", 200), ("randn", 150)):
        run_both(1, 600, 600, 2, 1, 16, w, kind, block=256)


# (document lengths per row, hq, hkv, d, w, block): documents shorter than the window and of one token, selection
# blocks (of one and of two kernel tiles) straddling document boundaries, GQA.
PACKED = [
    ([[40, 3, 1, 70, 36], [150]], 4, 2, 16, 7, 128),
    ([[5, 90, 35]], 2, 1, 8, 20, 128),
]


@interpreted_only
@pytest.mark.parametrize("case", PACKED, ids=[str(c) for c in PACKED])
def test_triton_packed_equals_alone(case):
    lengths, hq, hkv, d, w, block = case
    seq_idx, spans = documents(lengths)
    q, k, v, bias = random_inputs(len(lengths), sum(lengths[0]), hq, hkv, d)
    assert_packed_equals_alone(
        lambda q, k, v, bias, s: dma_triton.dynamic_mask_attention_triton(q, k, v, bias, w, d ** -0.5, block, s),
        q, k, v, bias, seq_idx, spans, 1e-6)
    out = dma_triton.dynamic_mask_attention_triton(q, k, v, bias, w, d ** -0.5, block, seq_idx)
    ref = dynamic_mask_attention_naive(q.double(), k.double(), v.double(), bias.double(), w, True, d ** -0.5,
                                       seq_idx)
    assert rel_err(out, ref) < 1e-5


@interpreted_only
def test_dispatch_uses_triton_for_a_causal_window_and_torch_otherwise(monkeypatch):
    calls = []
    original = dma_triton.dynamic_mask_attention_triton
    monkeypatch.setattr(dma_triton, "dynamic_mask_attention_triton",
                        lambda *a, **kw: calls.append(a) or original(*a, **kw))
    q, k, v = torch.randn(1, 9, 2, 8), torch.randn(1, 9, 1, 8), torch.randn(1, 9, 1, 8)
    bias = torch.randn(1, 9, 1)
    out = dynamic_mask_attention(q, k, v, bias, keep_window=3, backend="triton")
    assert len(calls) == 1
    ref = dynamic_mask_attention(q, k, v, bias, keep_window=3, backend="naive")
    assert rel_err(out, ref) < 1e-5
    for w in (None, 9, 20):  # no window / window >= length: the torch path
        out = dynamic_mask_attention(q, k, v, bias, keep_window=w, backend="triton")
        assert rel_err(out, dynamic_mask_attention(q, k, v, bias, keep_window=w, backend="naive")) < 1e-5
    assert len(calls) == 1
    seq_idx = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1, 1]])
    out = dynamic_mask_attention(q, k, v, bias, keep_window=3, seq_idx=seq_idx, backend="triton")
    assert len(calls) == 2
    ref = dynamic_mask_attention(q, k, v, bias, keep_window=3, seq_idx=seq_idx, backend="naive")
    assert rel_err(out, ref) < 1e-5


def test_wide_offsets_from_the_first_in_row_offset_past_int32():
    """``WIDE`` (int64 row offsets) exactly when an element offset inside one batch row reaches 2**31."""
    meta = dict(device="meta")
    fits = torch.empty(3, 2 ** 20, 16, 128, **meta)  # largest in-row offset 2**31 - 1
    assert not dma_triton.needs_wide_offsets(fits)
    assert dma_triton.needs_wide_offsets(fits, torch.empty(1, 2 ** 20 + 1, 16, 128, **meta))
    strided = torch.empty(1, 2 ** 20, 32, 128, **meta)[:, :, :16]  # the view keeps its parent's strides
    assert dma_triton.needs_wide_offsets(strided)


@interpreted_only
def test_wide_offsets_give_the_same_bits(monkeypatch):
    """The int64-offset variant of the kernels (``WIDE``, forced by a zero threshold) against the int32 one:
    outputs and every gradient bit for bit (GQA, lq < lk, padding, several selection blocks)."""
    torch.manual_seed(5)
    b, lq, lk, hq, hkv, d, w = 2, 150, 190, 4, 2, 16, 9
    q, k, v = torch.randn(b, lq, hq, d), torch.randn(b, lk, hkv, d), torch.randn(b, lk, hkv, d)
    bias = torch.randn(b, lk, hkv)
    bias[0, :3] = float("-inf")
    weight = torch.randn(b, lq, hq, d)

    def run():
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v, bias)]
        out = dma_triton.dynamic_mask_attention_triton(*leaves, w, d ** -0.5, 128)
        (out * weight).sum().backward()
        return [out.detach()] + [t.grad for t in leaves]

    narrow = run()
    monkeypatch.setattr(dma_triton, "WIDE_OFFSETS", 0)
    assert dma_triton.needs_wide_offsets(q)
    wide = run()
    for name, a, r in zip(("out", "q", "k", "v", "bias"), wide, narrow):
        assert not torch.isnan(r).any() and torch.equal(a, r), name


@interpreted_only
def test_block_must_be_a_multiple_of_the_alignment():
    q, k, v, bias = torch.randn(1, 9, 1, 8), torch.randn(1, 9, 1, 8), torch.randn(1, 9, 1, 8), torch.randn(1, 9, 1)
    with pytest.raises(ValueError, match="block"):
        dma_triton.dynamic_mask_attention_triton(q, k, v, bias, 3, 0.5, 64)


@interpreted_only
def test_triton_gradient_of_a_query_sliced_from_a_fused_projection():
    """q a non-dense view (the first third of a fused q/k/v projection's output): dq comes back right. The dq
    kernel once wrote with q's strides into a buffer of its own (contiguous) strides — outside the buffer."""
    b, l, hq, hkv, d, w = 1, 96, 2, 1, 16, 8
    fused = torch.randn(b, l, 3 * hq * d, requires_grad=True)
    q = fused[..., :hq * d].view(b, l, hq, d)
    assert not q.is_contiguous()
    k, v = (torch.randn(b, l, hkv, d) for _ in range(2))
    bias = torch.randn(b, l, hkv)
    weight = torch.randn(b, l, hq, d)
    (dma_triton.dynamic_mask_attention_triton(q, k, v, bias, w, 0.25) * weight).sum().backward()
    ref_q = q.detach().double().requires_grad_()
    ref = dynamic_mask_attention_naive(ref_q, k.double(), v.double(), bias.double(), w, True, 0.25)
    (ref * weight.double()).sum().backward()
    assert rel_err(fused.grad[..., :hq * d].reshape(b, l, hq, d), ref_q.grad) < 1e-5
    assert (fused.grad[..., hq * d:] == 0).all()
