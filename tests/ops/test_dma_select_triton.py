"""The Triton selection (ops/dma/selection_kernels.py ``live_keys_triton``) on the CPU under TRITON_INTERPRET=1:
element for element equal to the torch selection (``selection.live_keys_torch``), and its kept sets and drop ends
equal to brute-force O(L²) references, on small rows: ties (biases of few values), ``-inf`` / NaN padding,
documents, ``lq < lk``, odd lengths, ``w = 1`` and ``w >= L``, rank buckets and sub-blocks from one position up.
The CUDA cases at 16K / 64K are in test_dma_select.py.
"""
import pytest
import torch
from test_dma_select import live_counts, make_bias, oracle_counts

from conftest import interpreted_only, interpreter_child_test

pytest.importorskip("triton")

from wonderful_matrices.ops.dma import selection as dma_selection
from wonderful_matrices.ops.dma.selection_kernels import live_keys_triton, sub_block_for

test_interpreted_in_a_subprocess = interpreter_child_test(__file__)


def brute_drop(bias_rows, lq, w, documents=None):
    """(n, lk) long: drop_j by docs/design.md's definition — the position of the w-th key (in position order) of
    j's document that outranks j (larger bias, or equal bias and later), not before the first query ``lk − lq``,
    ``lk`` when fewer than w outrank it, cut at the end of j's document; 0 for a non-finite bias. O(lk²)."""
    n, lk = bias_rows.shape
    b = bias_rows.double()
    finite = torch.isfinite(b)
    pos = torch.arange(lk)
    docs = documents if documents is not None else torch.zeros(n, lk, dtype=torch.long)
    outranks = (b[:, :, None] > b[:, None, :]) | ((b[:, :, None] == b[:, None, :]) & (pos[:, None] > pos[None, :]))
    outranks &= finite[:, :, None] & (docs[:, :, None] == docs[:, None, :])  # [r, a, j]: a outranks j
    count = outranks.cumsum(1)  # [r, p, j]: keys a <= p outranking j
    reached = (count >= w) & (pos[None, :, None] >= lk - lq)
    first = torch.where(reached.any(1), reached.int().argmax(1), lk)
    doc_end = torch.searchsorted(docs.contiguous(), docs.contiguous(), right=True)
    return torch.where(finite, torch.minimum(first, doc_end), 0)


def check(bias, lq, w, block, tile, documents=None, variants=({},)):
    """live_keys_triton with each of ``variants`` (sub_block / bucket sizes) equal to the torch path; the torch
    path's drop ends and kept sets equal to the brute-force references (NaN pads like -inf)."""
    ref = dma_selection.live_keys_torch(bias, lq, w, block, documents, tile)
    for sizes in variants:
        got = live_keys_triton(bias, lq, w, block, documents, tile, **sizes)
        for name, a, b in zip(("drop", "keys", "ends"), got, ref):
            assert a.dtype == b.dtype == torch.int32 and a.shape == b.shape, (name, sizes)
            assert torch.equal(a, b), (name, sizes)
    assert torch.equal(ref[0].long(), brute_drop(bias, lq, w, documents))
    lk = bias.shape[1]
    padded = torch.where(torch.isnan(bias), float("-inf"), bias)
    assert torch.equal(live_counts(*ref, lq, lk, block, tile), oracle_counts(padded, lq, w, documents))


# (n, lk, lq, w, block, tile): odd lengths and blocks, lq < lk (and lq = 1), w = 1, w >= lk, a block of one query.
CASES = [(3, 13, 13, 3, 4, 2), (2, 20, 9, 5, 3, 1), (3, 16, 16, 1, 6, 3), (2, 7, 1, 2, 4, 4), (3, 12, 12, 40, 5, 5),
         (2, 1, 1, 1, 2, 1), (2, 20, 20, 6, 1, 1), (3, 97, 97, 7, 32, 16), (3, 110, 77, 20, 40, 8),
         (2, 100, 100, 99, 33, 11), (2, 90, 90, 100, 30, 10)]
KINDS = [(case, kind) for case in CASES for kind in ("ties", "padded")] + [
    (case, kind) for case in (CASES[0], CASES[1], CASES[8]) for kind in ("randn", "zero")]


@interpreted_only
@pytest.mark.parametrize("case,kind", KINDS, ids=[f"{c}-{k}" for c, k in KINDS])
def test_live_keys_triton_equals_torch_and_brute_force(case, kind):
    n, lk, lq, w, block, tile = case
    g = torch.Generator().manual_seed(hash((case, kind, "triton")) % 2**31)
    bias = make_bias(kind, max(n, 2), lk, torch.float32, g)
    if kind == "padded":
        bias[-1, lk // 2:] = float("nan")  # NaN pads like -inf
    # buckets of several ranks, all ranks in one bucket, buckets of one rank with sub-blocks of one query
    check(bias, lq, w, block, tile, variants=(dict(bucket=4), {}, dict(sub_block=1, bucket=1)))


@interpreted_only
@pytest.mark.parametrize("kind", ["randn", "ties", "padded"])
def test_live_keys_triton_documents(kind):
    """Packed rows: documents shorter than the window and of one token, blocks and sub-blocks across boundaries."""
    g = torch.Generator().manual_seed(hash((kind, "triton documents")) % 2**31)
    lengths = [[9, 1, 20, 3, 27], [60], [30, 29, 1]]
    documents = torch.stack([torch.repeat_interleave(torch.arange(len(x)), torch.tensor(x)) for x in lengths])
    bias = make_bias(kind, 3, 60, torch.float32, g)
    for w, block, tile, sizes in ((4, 8, 4, dict(bucket=4)), (11, 12, 3, dict(bucket=2, sub_block=4)),
                                  (1, 6, 6, dict()), (70, 10, 5, dict(bucket=8))):
        check(bias, 60, w, block, tile, documents, variants=(sizes,))


@interpreted_only
def test_live_keys_triton_longer_rows():
    """Rows of a few hundred keys with ties, padding, lq < lk, several sub-blocks per block, contiguous and strided,
    against the torch path (the brute force is checked above)."""
    g = torch.Generator().manual_seed(7)
    bias = torch.randint(-6, 6, (2, 700), generator=g).float()
    bias[1, ::5] = float("-inf")
    bias[0, :40] = float("nan")
    strided = bias.t().contiguous().t()  # the same rows with column-major strides (as a permuted bias gives)
    for lq, w, block, bucket in ((700, 90, 128, 16), (650, 300, 64, 64), (700, 20, 128, None)):
        ref = dma_selection.live_keys_torch(bias, lq, w, block)
        for rows in (bias, strided):
            got = live_keys_triton(rows, lq, w, block, bucket=bucket)
            assert all(torch.equal(a, b) for a, b in zip(got, ref))


@interpreted_only
def test_select_blocks_uses_the_lists_where_triton_runs():
    """select_blocks under the interpreter takes live_keys' lists: the same kept sets as the oracle."""
    from test_dma_select import kept_counts

    g = torch.Generator().manual_seed(9)
    bias = make_bias("padded", 3, 50, torch.float32, g)
    for lq, w, block in ((50, 6, 8), (37, 1, 5), (50, 60, 7)):
        candidates, start, end = dma_selection.select_blocks(bias, lq, w, block)
        assert candidates.shape == (3, -(-lq // block), w + block)
        assert torch.equal(kept_counts(candidates, start, end, lq, 50, block), oracle_counts(bias, lq, w))


def test_brute_drop_agrees_with_the_torch_selection():
    """The brute-force reference itself against the torch path (in the main process, no Triton)."""
    g = torch.Generator().manual_seed(3)
    bias = make_bias("padded", 3, 40, torch.float64, g)
    for lq, w in ((40, 5), (25, 1), (40, 50)):
        assert torch.equal(dma_selection.live_keys_torch(bias, lq, w, 8, tile=4)[0].long(), brute_drop(bias, lq, w))


@pytest.mark.parametrize("block,expected", [(512, 128), (384, 128), (40, 40), (7, 7), (258, 86), (131, 1)])
def test_sub_block_divides_the_block(block, expected):
    assert sub_block_for(block) == expected


def test_bad_sizes_raise():
    bias = torch.randn(2, 20)
    with pytest.raises(ValueError, match="sub_block"):
        live_keys_triton(bias, 20, 3, 8, sub_block=3)
    with pytest.raises(ValueError, match="bucket"):
        live_keys_triton(bias, 20, 3, 8, bucket=6)
