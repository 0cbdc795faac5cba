"""The key-major dk/dv/dbias kernel of windowed DMA (ops/dma/windowed_key_kernels.py, ``DKV_PATH = "key"``) under
TRITON_INTERPRET=1 (float32, small shapes; in the child process ``test_interpreted_in_a_subprocess`` starts):
gradients against the float64 oracle with test_dma_triton.py's bounds and against the list path (``_dkv_kernel``),
whose forward and dq it shares bit for bit; and the key tiling itself.

Under the interpreter the kernel runs 16-key tiles and 16-query tiles (``KEY_MAJOR``), so rows of 77-300 keys hold
many tiles; the tests shorten ``KEY_SPAN`` (2048 on a GPU) so that the rows hold several spans too.
"""
import pytest
import torch
from dma_packing import documents, random_inputs

from conftest import interpreted_only, interpreter_child_test, rel_err

pytest.importorskip("triton")

from wonderful_matrices.ops.dma import windowed_kernels as wk
from wonderful_matrices.ops.dma import windowed_key_kernels as wkk
from wonderful_matrices.ops.dma.naive import dynamic_mask_attention_naive

test_interpreted_in_a_subprocess = interpreter_child_test(__file__)


def make_bias(kind: str, b: int, lk: int, hkv: int, w: int) -> torch.Tensor:
    return {"randn": lambda: torch.randn(b, lk, hkv) * 2,
            # few distinct values: many ties (ties go to the later key), so many keys share a drop
            "ties": lambda: torch.randint(-2, 2, (b, lk, hkv)).float(),
            "zero": lambda: torch.zeros(b, lk, hkv),  # sliding window: drop_j = j + w
            # sliding window but for two keys that outrank all others: kept to the end, each in a tile of keys
            # dropped after w queries (position tiles: see test_a_long_lived_key_among_short_lived_ones)
            "long-lived": lambda: torch.zeros(b, lk, hkv).index_fill_(1, torch.tensor([lk // 3, lk // 3 + 5]), 5.0),
            }[kind]()


def attend(path: str, leaves, w: int, block: int | None, seq_idx=None) -> torch.Tensor:
    q = leaves[0]
    with wk.using_dkv_path(path):
        return wk.dynamic_mask_attention_triton(*leaves, w, q.shape[-1] ** -0.5, block, seq_idx)


def gradients(path: str, inputs, weight, w: int, block: int | None, seq_idx=None):
    """Output and the gradients of ``(out · weight).sum()`` with respect to q, k, v, bias by the ``path`` backward."""
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = attend(path, leaves, w, block, seq_idx)
    (out.double() * weight).sum().backward()
    return out.detach(), [t.grad for t in leaves]


def oracle(inputs, weight, w: int, seq_idx=None):
    leaves = [t.detach().double().requires_grad_(True) for t in inputs]
    out = dynamic_mask_attention_naive(*leaves, w, True, inputs[0].shape[-1] ** -0.5, seq_idx)
    (out * weight).sum().backward()
    return out.detach(), [t.grad for t in leaves]


def assert_key_path_matches(inputs, w: int, block: int | None = 128, seq_idx=None):
    """The key path's output and gradients against the oracle (test_dma_triton.run_both's bounds) and against the
    list path (the same forward and dq kernels: equal bits; dk, dv, dbias within the same bound)."""
    weight = torch.randn(inputs[0].shape, dtype=torch.float64)
    out, grads = gradients("key", inputs, weight, w, block, seq_idx)
    out_list, grads_list = gradients("list", inputs, weight, w, block, seq_idx)
    ref, ref_grads = oracle(inputs, weight, w, seq_idx)
    assert not torch.isnan(out).any() and rel_err(out, ref) < 1e-5
    assert torch.equal(out, out_list) and torch.equal(grads[0], grads_list[0])
    for name, a, a_list, r in zip(("q", "k", "v", "bias"), grads, grads_list, ref_grads):
        # gradients can be exactly zero (w == 1 has no dq/dk): floor the reference norm at 1
        err = (a.double() - r).norm().item() / max(r.norm().item(), 1.0)
        assert err < 1e-5, name
        err = (a.double() - a_list.double()).norm().item() / max(a_list.double().norm().item(), 1.0)
        assert err < 1e-5, name


def inputs_of(b, lq, lk, hq, hkv, d, w, bias_kind, pad=False):
    q, k, v = torch.randn(b, lq, hq, d), torch.randn(b, lk, hkv, d), torch.randn(b, lk, hkv, d)
    bias = make_bias(bias_kind, b, lk, hkv, w)
    if pad:  # left padding of row 0 and one padded key in every row
        bias[0, :3] = float("-inf")
        bias[:, lk // 2, 0] = float("-inf")
    return q, k, v, bias


# (b, lq, lk, hq, hkv, d, w, bias, pad): GQA 1, 2 and 3, lq < lk, odd lengths, head dims that are not a power of two,
# windows from 1 to past the selection block, ties, padding.
CASES = [
    (1, 130, 130, 4, 2, 16, 20, "randn", True),
    (2, 77, 77, 3, 1, 24, 7, "ties", False),
    (1, 100, 130, 2, 2, 32, 20, "ties", True),
    (1, 77, 130, 3, 1, 16, 65, "randn", True),
    (1, 140, 140, 1, 1, 16, 3, "zero", False),
    (1, 150, 150, 2, 1, 8, 1, "randn", False),
    (1, 300, 300, 2, 1, 16, 150, "randn", False),
]


@interpreted_only
@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_key_path_matches_oracle_and_list_path(case, monkeypatch):
    monkeypatch.setattr(wkk, "KEY_SPAN", 32)  # several spans of two key tiles per row
    assert_key_path_matches(inputs_of(*case), case[6])


@interpreted_only
@pytest.mark.parametrize("span", [24, 2048])
def test_any_span_gives_the_same_gradients(span, monkeypatch):
    """Spans that are no multiple of the key tile (tiles straddle spans) and the GPU's default (one span per row):
    every tiling that holds each key once gives the same sums."""
    monkeypatch.setattr(wkk, "KEY_SPAN", span)
    assert_key_path_matches(inputs_of(1, 110, 130, 4, 2, 16, 20, "randn", pad=True), 20)


@interpreted_only
def test_a_long_lived_key_among_short_lived_ones(monkeypatch):
    """Position tiles (span = key tile): two keys kept to the end of the row sit in tiles of keys dropped after
    w queries, so those tiles loop far past their other keys' drops, masked there."""
    tile = wkk.KEY_MAJOR[0].kwargs["BLOCK_N"]
    monkeypatch.setattr(wkk, "KEY_SPAN", tile)
    b, l, w = 1, 160, 20
    inputs = inputs_of(b, l, l, 2, 1, 16, w, "long-lived")
    drop, *_ = wk.select(inputs[3], l, w, 128)
    order = wkk.key_order(drop, l)
    long_lived = order.view(-1, tile)[(order.view(-1, tile) == l // 3).any(-1)]
    assert (drop[0, long_lived.long()] == l).sum() == 2 and (drop[0, long_lived.long()] < l).sum() >= tile - 2
    assert_key_path_matches(inputs, w)


@interpreted_only
def test_both_bodies_run():
    """The cases above run both the masked and the unmasked loop of the kernel (counted by ``tile_work`` with the
    interpreter's tiles), and the unmasked one on most query tiles of a sliding window."""
    config = wkk.KEY_MAJOR[0].kwargs
    for kind, w, share in (("randn", 20, 0.0), ("zero", 65, 0.5)):
        bias = make_bias(kind, 1, 300, 1, w)
        drop, *_ = wk.select(bias, 300, w, 128)
        work = wkk.tile_work(drop, 300, wkk.key_order(drop, 300, 32), config["BLOCK_N"], config["BLOCK_M"])
        assert share * work["query_tiles"] < work["unmasked"] < work["query_tiles"], kind


# (document lengths per row, hq, hkv, d, w): documents shorter than the window and of one token, GQA
PACKED = [
    ([[40, 3, 1, 70, 36], [150]], 4, 2, 16, 7),
    ([[5, 90, 35]], 3, 1, 8, 20),
]


@interpreted_only
@pytest.mark.parametrize("case", PACKED, ids=[str(c) for c in PACKED])
def test_packed_documents(case, monkeypatch):
    monkeypatch.setattr(wkk, "KEY_SPAN", 32)
    lengths, hq, hkv, d, w = case
    seq_idx, _ = documents(lengths)
    q, k, v, bias = random_inputs(len(lengths), sum(lengths[0]), hq, hkv, d)  # with padded keys
    assert_key_path_matches((q, k, v, bias), w, seq_idx=seq_idx)


@interpreted_only
def test_strided_inputs(monkeypatch):
    """q, k, v slices of one fused projection (row stride (hq + 2·hkv)·d, unit last stride): the gradients land in
    the fused tensor's slices, against the oracle on contiguous copies."""
    monkeypatch.setattr(wkk, "KEY_SPAN", 32)
    b, l, hq, hkv, d, w = 1, 96, 2, 1, 16, 12
    fused = torch.randn(b, l, (hq + 2 * hkv) * d, requires_grad=True)
    q = fused[..., :hq * d].view(b, l, hq, d)
    k = fused[..., hq * d:(hq + hkv) * d].view(b, l, hkv, d)
    v = fused[..., (hq + hkv) * d:].view(b, l, hkv, d)
    bias = torch.randn(b, l, hkv)
    assert not q.is_contiguous() and not k.is_contiguous()
    weight = torch.randn(b, l, hq, d, dtype=torch.float64)
    (attend("key", (q, k, v, bias), w, None).double() * weight).sum().backward()
    ref, ref_grads = oracle((q, k, v, bias), weight, w)
    got = (fused.grad[..., :hq * d], fused.grad[..., hq * d:(hq + hkv) * d], fused.grad[..., (hq + hkv) * d:])
    for name, a, r in zip("qkv", got, ref_grads):
        assert rel_err(a.reshape(r.shape), r) < 1e-5, name


@interpreted_only
def test_wide_offsets_give_the_same_bits(monkeypatch):
    """The int64-offset variant of the key kernel (``WIDE``, forced by a zero threshold) against the int32 one."""
    monkeypatch.setattr(wkk, "KEY_SPAN", 32)
    inputs = inputs_of(2, 150, 190, 4, 2, 16, 9, "randn", pad=True)
    weight = torch.randn(inputs[0].shape, dtype=torch.float64)
    narrow = gradients("key", inputs, weight, 9, 128)[1]
    monkeypatch.setattr(wk, "WIDE_OFFSETS", 0)
    wide = gradients("key", inputs, weight, 9, 128)[1]
    for name, a, r in zip(("q", "k", "v", "bias"), wide, narrow):
        assert not torch.isnan(r).any() and torch.equal(a, r), name


@interpreted_only
def test_backward_op_fake_matches_the_kernels():
    """The ``dma_windowed_backward`` custom op with ``dkv_path="key"``: its fake (what torch.compile plans with)
    gives the real outputs' shapes, dtypes and strides (opcheck), for a query laid out (b, h, l, d)."""
    b, l, hq, hkv, d, w = 1, 96, 2, 1, 16, 30
    q = torch.randn(b, hq, l, d).transpose(1, 2)
    k, v, bias = torch.randn(b, l, hkv, d), torch.randn(b, l, hkv, d), torch.randn(b, l, hkv)
    block = wk.block_for(w)
    drop, keys, ends, counts = wk.select(bias, l, w, block)
    bias32 = bias.float().contiguous()
    out, lse = wk.windowed_forward(q, k, v, bias32, keys, ends, counts, drop, 0.25, block)
    torch.library.opcheck(torch.ops.wonderful_matrices.dma_windowed_backward.default,
                          (q, k, v, bias32, keys, ends, counts, drop, out, lse, torch.randn_like(out), 0.25, block,
                           "key"), test_utils=("test_faketensor",))


def test_key_order_puts_each_key_in_one_tile_sorted_by_span_then_drop():
    """Every row of :func:`key_order` is a permutation of the keys; inside each span (in position order) the keys no
    query keeps come first by position, then the others by ``drop_j`` ascending, ties by position."""
    torch.manual_seed(3)
    n, lk, lq, span = 3, 203, 150, 32
    drop = (torch.randint(0, lk + 1, (n, lk)) // 8 * 8).to(torch.int32)  # repeated drops: ties broken by position
    drop[0, :10] = 0  # padding keys
    order = wkk.key_order(drop, lq, span)
    assert order.dtype == torch.int32 and order.shape == (n, lk)
    assert torch.equal(order.long().sort(-1).values, torch.arange(lk).expand(n, lk))
    for r in range(n):
        for s0 in range(0, lk, span):
            keys = order[r, s0:s0 + span].tolist()
            assert sorted(keys) == list(range(s0, min(s0 + span, lk)))  # the span's keys, in the span's slots
            live = [drop[r, j].item() > max(j, lk - lq) for j in keys]
            cut = live.index(True) if True in live else len(keys)
            assert all(live[cut:]) and not any(live[:cut])  # dead keys first
            assert keys[:cut] == sorted(keys[:cut])
            assert [(drop[r, j].item(), j) for j in keys[cut:]] == sorted((drop[r, j].item(), j) for j in keys[cut:])


def test_tile_work_counts_what_the_loops_visit():
    """:func:`tile_work` against a loop over the tiles: kept pairs, the query tiles each tile's loop runs (from its
    first live query rounded down to its last) and those inside every live key's range."""
    torch.manual_seed(4)
    n, lk, lq, key_tile, block_m = 2, 90, 70, 8, 16
    drop = torch.randint(0, lk + 1, (n, lk), dtype=torch.int32)
    order = wkk.key_order(drop, lq, 24)
    offset = lk - lq
    kept = steps = unmasked = 0
    for r in range(n):
        for t0 in range(0, lk, key_tile):
            keys = order[r, t0:t0 + key_tile].tolist()
            ranges = [(max(j, offset) - offset, drop[r, j].item() - offset) for j in keys]
            ranges = [(a, e) for a, e in ranges if e > a]
            kept += sum(e - a for a, e in ranges)
            if not ranges:
                continue
            for r0 in range(min(a for a, _ in ranges) // block_m * block_m, max(e for _, e in ranges), block_m):
                steps += 1
                unmasked += all(a <= r0 and r0 + block_m <= e for a, e in ranges)
    work = wkk.tile_work(drop, lq, order, key_tile, block_m)
    assert work == dict(kept=kept, visited=steps * block_m * key_tile, query_tiles=steps, unmasked=unmasked)


def test_dkv_path_is_checked_and_restored():
    assert wk.DKV_PATH == "list"
    with wk.using_dkv_path("key"):
        assert wk.DKV_PATH == "key"
    assert wk.DKV_PATH == "list"
    with pytest.raises(ValueError, match="path"):
        with wk.using_dkv_path("keys"):
            pass
    assert wk.DKV_PATH == "list"
