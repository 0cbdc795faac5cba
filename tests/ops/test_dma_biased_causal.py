"""The no-window GPU path of dynamic_mask_attention (FlexAttention with a bias ``score_mod`` and a block mask built
from the causal offset and the documents): the block mask's tiles are checked pair by pair, and the path, run
eagerly on the CPU, against the oracle, and its forward compiled by Inductor (Flex's CPU template). The compiled
path's gradients run on the GPU in test_dma_cuda.py."""
import pytest
import torch
from dma_packing import documents, random_inputs

from conftest import rel_err
from wonderful_matrices.ops.dma import biased_causal
from wonderful_matrices.ops.dma.naive import dynamic_mask_attention_naive


def allowed_pairs(b, lq, lk, seq_idx):
    i = torch.arange(lq)[:, None] + lk - lq
    j = torch.arange(lk)[None, :]
    allowed = (j <= i).expand(b, lq, lk)
    if seq_idx is not None:
        allowed = allowed & (seq_idx[:, :, None] == seq_idx[:, None, :])
    return allowed


def tiles(num, indices, nq, nk):
    """(B, nq, nk) bool: the tiles a (count, indices) pair of the block mask lists."""
    listed = torch.zeros(num.shape[0], nq, nk, dtype=torch.bool)
    for bi in range(num.shape[0]):
        for m in range(nq):
            listed[bi, m, indices[bi, 0, m, : num[bi, 0, m]].long()] = True
    return listed


@pytest.mark.parametrize("lq,lk,lengths", [(300, 300, None), (130, 400, None), (128, 128, None),
                                           (300, 300, [[100, 28, 1, 171], [300], [256, 44]]),
                                           (520, 520, [[5, 250, 3, 262]])])
def test_block_mask_lists_every_visible_pair_and_full_tiles_are_full(lq, lk, lengths):
    t = biased_causal.TILE
    seq_idx = documents(lengths)[0] if lengths else None
    b = len(lengths) if lengths else 1
    mask = biased_causal.block_mask_for(lq, lk, seq_idx, torch.device("cpu"))
    nq, nk = -(-lq // t), -(-lk // t)
    partial = tiles(mask.kv_num_blocks, mask.kv_indices, nq, nk)
    full = tiles(mask.full_kv_num_blocks, mask.full_kv_indices, nq, nk)
    assert not (partial & full).any()
    allowed = allowed_pairs(b, lq, lk, seq_idx)
    padded = torch.zeros(b, nq * t, nk * t, dtype=torch.bool)
    padded[:, :lq, :lk] = allowed
    any_pair = padded.view(b, nq, t, nk, t).any(-1).any(2)
    padded[:, lq:, :lk] = True  # query rows past the end do not exist: any answer is right there
    all_pairs = padded.view(b, nq, t, nk, t).all(-1).all(2)
    assert torch.equal(partial | full, any_pair)  # exactly the tiles with a visible pair
    # the key side (the backward's lists) is the transposition of the query side
    assert torch.equal(tiles(mask.q_num_blocks, mask.q_indices, nk, nq), partial.transpose(1, 2))
    assert torch.equal(tiles(mask.full_q_num_blocks, mask.full_q_indices, nk, nq), full.transpose(1, 2))
    assert not (full & ~all_pairs).any()  # a full tile has every pair visible (the mask is not evaluated there)
    if lengths is None and lq % t == 0 and lk % t == 0:
        assert torch.equal(full, all_pairs)


def test_causal_block_masks_are_built_once_per_shape_and_the_oldest_dropped(monkeypatch):
    monkeypatch.setattr(biased_causal, "_causal_masks", type(biased_causal._causal_masks)())
    monkeypatch.setattr(biased_causal, "CAUSAL_MASKS_KEPT", 2)
    cpu = torch.device("cpu")
    first = biased_causal.causal_block_mask(300, 300, cpu)
    built = biased_causal.block_mask_for(300, 300, None, cpu)
    for a, b in ((first.kv_num_blocks, built.kv_num_blocks), (first.kv_indices, built.kv_indices),
                 (first.full_kv_num_blocks, built.full_kv_num_blocks), (first.full_kv_indices, built.full_kv_indices)):
        assert torch.equal(a, b)
    assert biased_causal.causal_block_mask(300, 300, cpu) is first
    other = biased_causal.causal_block_mask(130, 400, cpu)
    assert biased_causal.causal_block_mask(300, 300, cpu) is first  # used last: (130, 400) is now the oldest
    biased_causal.causal_block_mask(128, 128, cpu)
    assert list(biased_causal._causal_masks) == [(300, 300, cpu), (128, 128, cpu)]
    assert biased_causal.causal_block_mask(130, 400, cpu) is not other


# FlexAttention has no backward on the CPU: forward here, gradients on the GPU (test_dma_cuda.py).
@pytest.mark.parametrize("lq,lk,hq,hkv,d", [(150, 150, 4, 2, 16), (70, 200, 2, 2, 32), (1, 9, 2, 1, 16)])
def test_eager_forward_matches_oracle(lq, lk, hq, hkv, d):
    q = torch.randn(2, lq, hq, d)
    k, v = torch.randn(2, lk, hkv, d), torch.randn(2, lk, hkv, d)
    bias = torch.randn(2, lk, hkv) * 2
    bias[0, :3] = float("-inf")  # row 0: the first queries see only padding when lq == lk
    bias[1, lk // 2, 0] = float("-inf")
    out = biased_causal.dynamic_mask_attention_biased_causal(q, k, v, bias, d ** -0.5, compiled=False)
    ref = dynamic_mask_attention_naive(q.double(), k.double(), v.double(), bias.double(), None, True, d ** -0.5)
    assert rel_err(out, ref) < 1e-5


def test_padded_bias_rows_is_a_differentiable_pad():
    """The padding operator (a buffer of its own under Inductor) is ``F.pad`` with MASKED_BIAS, gradient included,
    and passes torch's operator checks (fake tensor, autograd registration, schema)."""
    rows = torch.randn(2, 3, 37, requires_grad=True)
    out = biased_causal.padded_bias_rows(rows, 91)
    assert out.shape == (2, 3, 128) and out.is_contiguous()
    assert torch.equal(out[..., :37], rows) and (out[..., 37:] == biased_causal.MASKED_BIAS).all()
    weights = torch.randn(out.shape)
    (grad,) = torch.autograd.grad((out * weights).sum(), rows)
    assert torch.equal(grad, weights[..., :37])
    torch.library.opcheck(biased_causal.padded_bias_rows, (rows, 91))


def test_padded_document_ids_repeat_the_last_document():
    seq_idx = documents([[40, 1, 100, 9], [150]])[0]
    out = biased_causal.padded_document_ids(seq_idx, 106)
    assert out.shape == (2, 256) and out.is_contiguous() and torch.equal(out[:, :150], seq_idx)
    assert torch.equal(out[:, 150:], seq_idx[:, -1:].expand(-1, 106))
    torch.library.opcheck(biased_causal.padded_document_ids, (seq_idx, 106))


@pytest.mark.parametrize("lengths", [None, [[40, 1, 100, 9]]])
def test_inductor_compiles_the_path_with_the_padded_buffers(lengths):
    """Inductor compiles the Flex path (forward; Flex has no CPU backward) with the padded bias rows and document ids
    buffers of their own (custom operators in the traced graph) that the score_mod / mask_mod read, and computes the
    oracle's output. With a plain ``F.pad`` of the bias Inductor inlined it into the Flex template and found no
    kernel on the CPU; on GPUs the template's code generation failed for the bias (session 15) and for the ``torch.cat``
    that padded the document ids (session 16; the CPU template compiles that one, so only the graph shows it)."""
    torch._dynamo.reset()
    seq_idx = documents(lengths)[0] if lengths else None
    q, k, v, bias = random_inputs(1, 150, 2, 1, 16)
    targets = set()

    def recording(gm, example_inputs):
        targets.update(node.target for node in gm.graph.nodes if node.op == "call_function")
        return torch._inductor.compile(gm, example_inputs)

    attend = torch.compile(lambda *t: biased_causal.dynamic_mask_attention_biased_causal(*t, 0.25, seq_idx),
                           fullgraph=True, backend=recording)
    with torch.no_grad():
        out = attend(q, k, v, bias)
    ref = dynamic_mask_attention_naive(q.double(), k.double(), v.double(), bias.double(), None, True, 0.25, seq_idx)
    assert rel_err(out, ref) < 1e-5
    assert torch.ops.wonderful_matrices.padded_bias_rows.default in targets or \
        biased_causal.padded_bias_rows in targets
    if lengths:
        assert torch.ops.wonderful_matrices.padded_document_ids.default in targets or \
            biased_causal.padded_document_ids in targets
    # the block lists are an operator's output: none of their arithmetic is left to Inductor's code generation
    assert torch.ops.wonderful_matrices.flex_block_lists.default in targets or biased_causal.block_lists in targets
    assert not targets & {torch.ops.aten.searchsorted.Tensor, torch.ops.aten.floor_divide.default,
                          torch.ops.aten.div.Tensor_mode, torch.searchsorted}


@pytest.mark.parametrize("lengths", [None, [[40, 1, 100, 9], [150]]])
def test_block_lists_operator(lengths):
    """The block lists' operator: its fake agrees with it (opcheck), with and without documents."""
    seq_idx = documents(lengths)[0] if lengths else torch.empty(0)
    torch.library.opcheck(biased_causal.block_lists, (seq_idx, 150, 150))
    if lengths is None:
        torch.library.opcheck(biased_causal.block_lists, (seq_idx, 100, 400))


def test_eager_forward_packed_equals_alone_and_oracle():
    seq_idx, spans = documents([[40, 1, 100, 9], [150]])
    q, k, v, bias = random_inputs(2, 150, 4, 2, 16)
    bias[0, 41:45] = float("-inf")  # the first keys of the third document
    out = biased_causal.dynamic_mask_attention_biased_causal(q, k, v, bias, 0.25, seq_idx, compiled=False)
    for r, s, e in spans:
        alone = biased_causal.dynamic_mask_attention_biased_causal(
            *(t[r:r + 1, s:e] for t in (q, k, v, bias)), 0.25, compiled=False)
        assert rel_err(out[r:r + 1, s:e], alone) < 1e-6
    ref = dynamic_mask_attention_naive(q.double(), k.double(), v.double(), bias.double(), None, True, 0.25, seq_idx)
    assert rel_err(out, ref) < 1e-5


def test_compiled_attend_keeps_more_variants_than_a_length_sweep_makes(monkeypatch):
    """A sweep over lengths forward and backward, then the same length with documents, stays compiled (past
    dynamo's default of 8 variants the function would run eagerly, building the full (b, h, l, l) scores).
    Dynamo's ``eager`` backend on the CPU: the variants, not the kernels, are under test; gradient mode is switched
    on inputs without gradients (FlexAttention has no CPU backward)."""
    import torch._dynamo

    monkeypatch.setattr(torch._dynamo.config, "fail_on_recompile_limit_hit", True)
    torch._dynamo.reset()
    compiled = biased_causal.compile_attend(backend="eager")
    seq_idx, _ = documents([[100, 60, 96]])
    try:
        for length, docs in [(128, None), (256, None), (384, None), (512, None), (256, seq_idx)]:
            q, k, v, bias = random_inputs(1, length, 2, 2, 16, pad=False)
            rows = bias.permute(0, 2, 1).contiguous()
            mask = biased_causal.block_mask_for(length, length, docs, q.device)
            want = biased_causal._attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), rows, mask, 0.25)
            for grad in (False, True):
                with torch.set_grad_enabled(grad):
                    got = compiled(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), rows, mask, 0.25)
                assert rel_err(got, want) < 1e-6
    finally:
        torch._dynamo.reset()
