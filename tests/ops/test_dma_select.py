"""The vectorised windowed selection of DMA (ops/dma/selection.py ``select_blocks``) against the naive oracle's kept
sets (``naive.kept_keys``)."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from wonderful_matrices.ops.dma import selection as dma_selection
from wonderful_matrices.ops.dma.naive import kept_keys


def kept_counts(candidates, start, end, lq, lk, block):
    """(n, lq, lk) int: how many slots make query i keep key j (must be 0/1), from the block format."""
    n, nb, width = candidates.shape
    assert start.dtype == end.dtype == torch.int32 and candidates.dtype == torch.long
    assert ((0 <= start) & (start <= end) & (end <= block)).all()
    assert ((0 <= candidates) & (candidates < lk)).all()
    rel = torch.arange(block)
    kept = (start[..., None] <= rel) & (rel < end[..., None])  # (n, nb, width, block)
    counts = torch.zeros(n, nb, block, lk, dtype=torch.int32)
    counts.scatter_add_(3, candidates[:, :, None, :].expand(n, nb, block, width), kept.permute(0, 1, 3, 2).int())
    return counts.reshape(n, nb * block, lk)[:, :lq]


def live_counts(drop, keys, ends, lq, lk, block, tile):
    """(n, lq, lk) int from live_keys' format: query i keeps the listed key j when j <= p < drop_j (p = i + lk - lq);
    also checks the format: keys listed once per block, every kept key among the first ends[tile] entries."""
    n, nb, width = keys.shape
    assert drop.dtype == keys.dtype == ends.dtype == torch.int32
    assert drop.shape == (n, lk) and ends.shape == (n, nb, block // tile)
    assert ((0 <= drop) & (drop <= lk)).all() and ((0 <= keys) & (keys < lk)).all()
    assert (ends[..., 1:] >= ends[..., :-1]).all() and (ends[..., -1] <= width).all()
    counts = torch.zeros(n, nb * block, lk, dtype=torch.int32)
    for r in range(n):
        for t in range(nb):
            listed = keys[r, t, : ends[r, t, -1]].long()
            assert listed.unique().numel() == listed.numel()
            assert_list_order(listed, drop[r].long(), lk - lq + t * block)
            for rel in range(block):
                p = lk - lq + t * block + rel
                kept = listed[(listed <= p) & (p < drop[r, listed])]
                assert (kept.unsqueeze(1) == listed[: ends[r, t, rel // tile]]).any(1).all()
                counts[r, t * block + rel, kept] += 1
    return counts[:, :lq]


def assert_list_order(listed, drop, p0):
    """A block's listed keys (first query position ``p0``): the carried keys (``j < p0``) first, by ``drop_j``
    descending, ties by position ascending; then the block's own keys in position order."""
    carried = int((listed < p0).sum())
    assert (listed[:carried] < p0).all() and (listed[carried:] >= p0).all()
    own = listed[carried:]
    assert (own[1:] > own[:-1]).all()
    c, d = listed[:carried], drop[listed[:carried]]
    assert ((d[:-1] > d[1:]) | ((d[:-1] == d[1:]) & (c[:-1] < c[1:]))).all()


def oracle_counts(bias_rows, lq, w, documents=None):
    n, lk = bias_rows.shape
    counts = torch.zeros(n, lq, lk, dtype=torch.int32)
    rows = bias_rows.double().tolist()
    for r in range(n):
        for i in range(lq):
            span = None
            if documents is not None:
                same = (documents[r] == documents[r, i + lk - lq]).nonzero()
                span = (int(same.min()), int(same.max()) + 1)
            counts[r, i, kept_keys(rows[r], i + lk - lq, w, True, span)] = 1
    return counts


def make_bias(kind, n, lk, dtype, generator):
    if kind == "randn":
        bias = torch.randn(n, lk, generator=generator, dtype=torch.float64)
    elif kind == "ties":  # quantised: many equal biases
        bias = torch.randint(-2, 2, (n, lk), generator=generator).double()
    elif kind == "zero":  # all equal: the window slides
        bias = torch.zeros(n, lk, dtype=torch.float64)
    else:  # padded: a fully padded row, left padding, random padded keys, ties among the rest
        bias = torch.randint(-1, 2, (n, lk), generator=generator).double()
        bias[torch.rand(n, lk, generator=generator) < 0.3] = float("-inf")
        bias[0] = float("-inf")
        bias[1, : lk // 3] = float("-inf")
    return bias.to(dtype)


# (n, lk, lq, w, block): window 1, small, >= length; blocks that do not divide the length, blocks of one query,
# blocks larger than dma_selection.SUB_BLOCK (the recursive path, with a padded last sub-block); lq < lk; lq = 1.
CASES = [
    (3, 13, 13, 3, 4),
    (2, 20, 9, 5, 3),
    (3, 16, 16, 1, 5),
    (2, 7, 1, 2, 4),
    (2, 1, 1, 1, 4),
    (3, 12, 12, 40, 5),
    (2, 30, 30, 6, 1),
    (3, 150, 150, 7, 64),
    (3, 170, 130, 20, 40),
    (3, 200, 200, 65, 64),
    (3, 160, 160, 1, 100),
    (2, 150, 150, 149, 33),
]


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
@pytest.mark.parametrize("kind", ["randn", "ties", "zero", "padded"])
def test_select_blocks_equals_oracle_and_loop(case, kind):
    n, lk, lq, w, block = case
    g = torch.Generator().manual_seed(hash((case, kind)) % 2**31)
    bias = make_bias(kind, max(n, 2), lk, torch.float64, g)
    ref = oracle_counts(bias, lq, w)
    candidates, start, end = dma_selection.select_blocks(bias, lq, w, block)
    nb = -(-lq // block)
    assert candidates.shape == start.shape == end.shape == (bias.shape[0], nb, w + block)
    got = kept_counts(candidates, start, end, lq, lk, block)
    assert torch.equal(got, ref)


# (n, lk, lq, w, block, tile): tiles of one query and of several, lq < lk, windows 1 and >= the length.
LIVE_CASES = [(3, 13, 13, 3, 4, 2), (2, 20, 9, 5, 3, 1), (3, 16, 16, 1, 6, 3), (2, 7, 1, 2, 4, 4),
              (3, 12, 12, 40, 5, 5), (3, 150, 150, 7, 64, 16), (3, 170, 130, 20, 40, 8), (2, 150, 150, 149, 33, 11)]


@pytest.mark.parametrize("case", LIVE_CASES, ids=[str(c) for c in LIVE_CASES])
@pytest.mark.parametrize("kind", ["randn", "ties", "zero", "padded"])
def test_live_keys_equals_oracle(case, kind):
    n, lk, lq, w, block, tile = case
    g = torch.Generator().manual_seed(hash((case, kind, "live")) % 2**31)
    bias = make_bias(kind, max(n, 2), lk, torch.float64, g)
    drop, keys, ends = dma_selection.live_keys(bias, lq, w, block, tile=tile)
    assert keys.shape == (bias.shape[0], -(-lq // block), w + block)
    assert torch.equal(live_counts(drop, keys, ends, lq, lk, block, tile), oracle_counts(bias, lq, w))


@pytest.mark.parametrize("case", LIVE_CASES, ids=[str(c) for c in LIVE_CASES])
@pytest.mark.parametrize("kind", ["randn", "ties", "padded"])
def test_carried_counts_are_the_prefixes_every_and_some_query_of_the_tile_keeps(case, kind):
    """carried_counts: per tile of ``tile`` queries, the longest prefix of the block's list whose keys every query
    of the tile keeps (``j <= p < drop_j`` for all its queries), and the number of carried entries some query of
    it keeps, which come first among the carried entries — counted from the definition."""
    n, lk, lq, w, block, tile = case
    g = torch.Generator().manual_seed(hash((case, kind, "heads")) % 2**31)
    bias = make_bias(kind, max(n, 2), lk, torch.float64, g)
    drop, keys, ends = dma_selection.live_keys(bias, lq, w, block, tile=tile)
    counts = dma_selection.carried_counts(drop, keys, ends, lq, block)
    assert counts.dtype == torch.int32 and counts.shape == ends.shape + (2,)
    heads, alive = counts.unbind(-1)
    assert (heads <= alive).all() and (alive <= ends).all()
    for r in range(keys.shape[0]):
        for t in range(keys.shape[1]):
            p0 = lk - lq + t * block
            listed = keys[r, t, : ends[r, t, -1]].long()
            carried = listed < p0
            n_carried = int(carried.sum())
            assert carried[:n_carried].all()  # the carried entries come first
            for s in range(block // tile):
                if p0 + s * tile >= lk:  # a tile past the last query
                    continue
                queries = torch.arange(p0 + s * tile, min(p0 + (s + 1) * tile, lk))
                kept = (listed[:, None] <= queries) & (queries < drop[r, listed, None])
                # the carried keys come first; own keys are never in the head
                expected = int(torch.cumprod((kept.all(1) & carried).int(), 0).sum())
                assert heads[r, t, s] == expected, (r, t, s)
                by_some = kept.any(1)[:n_carried]
                assert alive[r, t, s] == int(by_some.sum()) and by_some[: alive[r, t, s]].all(), (r, t, s)
                assert not kept[alive[r, t, s]:n_carried].any()  # skipped entries: kept by none of the tile


@pytest.mark.parametrize("kind", ["randn", "ties", "padded"])
def test_live_keys_documents_equal_oracle(kind):
    """Packed rows: documents shorter than the window, of one token, and blocks straddling boundaries."""
    g = torch.Generator().manual_seed(hash(kind) % 2**31)
    lengths = [[9, 1, 20, 3, 27], [60]]
    documents = torch.stack([torch.repeat_interleave(torch.arange(len(x)), torch.tensor(x)) for x in lengths])
    bias = make_bias(kind, 2, 60, torch.float32, g)
    for w, block, tile in ((4, 8, 4), (11, 12, 3)):
        drop, keys, ends = dma_selection.live_keys(bias, 60, w, block, documents, tile)
        assert torch.equal(live_counts(drop, keys, ends, 60, 60, block, tile), oracle_counts(bias, 60, w, documents))


@pytest.mark.parametrize("kind", ["randn", "ties", "padded"])
def test_select_blocks_documents_equal_oracle(kind):
    """Packed rows: documents shorter than the window, of one token, and blocks straddling boundaries."""
    g = torch.Generator().manual_seed(hash((kind, "blocks")) % 2**31)
    lengths = [[9, 1, 20, 3, 27], [60]]
    documents = torch.stack([torch.repeat_interleave(torch.arange(len(x)), torch.tensor(x)) for x in lengths])
    bias = make_bias(kind, 2, 60, torch.float32, g)
    for w, block in ((4, 8), (11, 7)):
        candidates, start, end = dma_selection.select_blocks(bias, 60, w, block, documents)
        assert torch.equal(kept_counts(candidates, start, end, 60, 60, block), oracle_counts(bias, 60, w, documents))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_select_blocks_in_the_bias_dtype(dtype):
    """Ties as the bias's own dtype sees them: a bf16 bias rounds distinct float64 values together."""
    g = torch.Generator().manual_seed(3)
    bias = (torch.randn(2, 90, generator=g) * 0.05).to(dtype)
    bias[1, 10:20] = float("-inf")
    got = kept_counts(*dma_selection.select_blocks(bias, 80, 11, 24), 80, 90, 24)
    assert torch.equal(got, oracle_counts(bias, 80, 11))


def test_select_blocks_long_row_equals_oracle():
    """A longer row (several blocks of 64, window 300, ties) against the oracle's kept sets."""
    g = torch.Generator().manual_seed(5)
    bias = torch.randint(-4, 4, (4, 1100), generator=g).float()
    bias[2, ::7] = float("-inf")
    for lq, w, block in ((1100, 300, 64), (1000, 64, 128)):
        new = kept_counts(*dma_selection.select_blocks(bias, lq, w, block), lq, 1100, block)
        assert torch.equal(new, oracle_counts(bias, lq, w))
        assert new.sum(-1).max() == w  # full windows are reached


@pytest.mark.parametrize("q,k,base_size", [(5, 3, 4), (16, 1, 2), (17, 6, 6), (40, 20, 25), (100, 9, 30), (70, 80, 90)])
def test_running_kth_equals_sorting(q, k, base_size):
    g = torch.Generator().manual_seed(q * 1000 + k)
    m = 6
    values = torch.randperm(m * (base_size + q), generator=g).view(m, base_size + q)
    base = values[:, :base_size].sort(dim=1).values
    base[0, -2:] = 10**6  # equal base values (empty slots of a window)
    new = values[:, base_size:]
    valid = torch.rand(m, q, generator=g) < 0.7
    valid[1] = False
    new = torch.where(valid, new, 10**6 + 1)  # equal invalid values
    got = dma_selection._running_kth(base, new, valid, k)
    for r in range(m):
        for step in range(q):
            joined = new[r, : step + 1][valid[r, : step + 1]]
            assert got[r, step] == torch.cat([base[r], joined]).sort().values[k - 1]


class _CountCalls(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("select", ["select_blocks", "live_keys"])
def test_selection_has_no_loop_over_blocks(select):
    """No loop over blocks: 16 times the blocks (4 -> 64) add only the 4 doubling steps of the prefix scan, a fixed
    handful of tensor operations each."""
    counts = []
    for lk in (256, 4096):
        bias = torch.randn(2, lk)
        with _CountCalls() as mode:
            getattr(dma_selection, select)(bias, lk, 100, 64)
        counts.append(mode.calls)
    assert counts[0] < 200 and counts[1] - counts[0] <= 4 * 8


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_select_blocks_cuda_equals_cpu_at_scale():
    """On the GPU at a benchmark-like size (window 2048, block 512, 8K keys, 4 heads; ties and padding): the same
    kept sets as on the CPU (where the selection is checked against the oracle)."""
    g = torch.Generator().manual_seed(11)
    bias = torch.randint(-8, 8, (4, 8192), generator=g).float()
    bias[1, :700] = float("-inf")
    bias[3] = torch.randn(8192, generator=g)
    for lq in (8192, 5000):
        new = [t.cpu() for t in dma_selection.select_blocks(bias.cuda(), lq, 2048, 512)]
        old = dma_selection.select_blocks(bias, lq, 2048, 512)
        for t in range(new[0].shape[1]):  # per block: the same (key, start, end) triples among live slots
            for r in range(4):
                a = {(int(c), int(s), int(e)) for c, s, e in zip(*(x[r, t].tolist() for x in new)) if e > s}
                b = {(int(c), int(s), int(e)) for c, s, e in zip(*(x[r, t].tolist() for x in old)) if e > s}
                assert a == b, (lq, t, r)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_live_keys_cuda_equals_cpu_at_scale():
    """live_keys on the GPU at a benchmark-like size gives the CPU's drop ends, lists and counts exactly."""
    g = torch.Generator().manual_seed(12)
    bias = torch.randint(-8, 8, (4, 8192), generator=g).float()
    bias[1, :700] = float("-inf")
    bias[3] = torch.randn(8192, generator=g)
    for lq in (8192, 5000):
        new = [t.cpu() for t in dma_selection.live_keys(bias.cuda(), lq, 2048, 512)]
        for a, b in zip(new, dma_selection.live_keys(bias, lq, 2048, 512)):
            assert torch.equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("lk", [16384, 65536])
def test_live_keys_triton_cuda_equals_torch_at_scale(lk):
    """The Triton selection (what live_keys runs on CUDA) against the torch path on the same GPU, element for
    element, at the benchmark's lengths: window 2048 with block 512 and with block 2048 (block_for's choice), window
    64 with block 128; ties, padding (left, scattered, NaN), a Gaussian row; lq = lk and lq < lk; packed documents;
    strided rows."""
    g = torch.Generator().manual_seed(lk)
    bias = torch.randint(-8, 8, (4, lk), generator=g).float()
    bias[1, :700] = float("-inf")
    bias[1, 5000::3] = float("nan")
    bias[3] = torch.randn(lk, generator=g)
    bias = bias.cuda()
    lengths = torch.randint(1, lk // 8, (64,), generator=g)
    documents = torch.repeat_interleave(torch.arange(64), lengths)[:lk]
    documents = torch.cat([documents, documents.new_full((lk - documents.numel(),), 64)]).cuda()
    documents = documents.expand(4, lk).contiguous()
    for lq, w, block, docs in ((lk, 2048, 512, None), (lk - 3000, 2048, 512, None), (lk, 64, 128, None),
                               (lk, 2048, 512, documents), (lk - 3000, 2048, 2048, None),
                               (lk, 2048, 2048, documents)):
        got = dma_selection.live_keys(bias, lq, w, block, docs)
        ref = dma_selection.live_keys_torch(bias, lq, w, block, docs)
        for name, a, b in zip(("drop", "keys", "ends"), got, ref):
            assert torch.equal(a, b), (lq, w, block, docs is not None, name)
    strided = bias.t().contiguous().t()  # rows as a permuted (batch, length, heads) bias gives them
    assert all(torch.equal(a, b) for a, b in zip(dma_selection.live_keys(strided, lk, 2048, 512),
                                                 dma_selection.live_keys_torch(bias, lk, 2048, 512)))


def test_selection_graphs_bookkeeping(monkeypatch):
    """selection_graphs' per-shape life cycle with a stand-in for the CUDA graph: the first call of a shape is left
    to the caller (None), the second records, later ones copy the bias in, replay and return clones; the oldest
    shape beyond GRAPHS_KEPT is dropped; a failed recording leaves the shape eager. A CPU bias never applies."""
    from wonderful_matrices.ops.dma import selection_graphs as sg

    class Replay:  # replays "outputs = 2·bias" from the static input, as a recorded graph would
        def __init__(self, bias, outputs):
            self.bias, self.outputs = bias, outputs

        def replay(self):
            self.outputs[0].copy_(self.bias * 2)

    recorded = []

    def record(select, bias, args):
        if args[0] == 13:
            return sg._FAILED
        static = bias.clone()
        outputs = (torch.empty_like(bias),)
        recorded.append(args)
        return sg._Recorded(Replay(static, outputs), static, outputs)

    monkeypatch.setattr(sg, "_graphs", type(sg._graphs)())
    monkeypatch.setattr(sg, "_record", record)
    monkeypatch.setattr(sg, "GRAPHS_KEPT", 2)
    bias = torch.randn(2, 3)
    assert sg.select_graphed(None, bias, 8, 4, 128) is None and not recorded  # first call: eager
    first = sg.select_graphed(None, bias, 8, 4, 128)
    assert recorded == [(8, 4, 128)] and torch.equal(first[0], bias * 2)
    other = torch.randn(2, 3)
    second = sg.select_graphed(None, other, 8, 4, 128)
    assert torch.equal(second[0], other * 2) and torch.equal(first[0], bias * 2)  # clones: first untouched
    assert len(recorded) == 1  # replayed, not recorded again
    for lq in (9, 10):  # two more shapes: the first one (lq 8) is the oldest and goes
        sg.select_graphed(None, bias, lq, 4, 128)
    assert len(sg._graphs) == 2 and all(key[3] != 8 for key in sg._graphs)
    for _ in range(3):
        assert sg.select_graphed(None, bias, 13, 4, 128) is None  # recording failed: eager from then on
    monkeypatch.setattr(sg, "ENABLED", True)
    assert not sg.applies(bias, None)  # CPU tensors never use the graphs
