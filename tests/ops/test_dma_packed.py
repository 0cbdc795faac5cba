"""Packed documents (``seq_idx``) in dynamic_mask_attention: the oracle and the torch backend give every document
of a packed row exactly what it gets alone, forward and gradients; bad ``seq_idx`` raises ValueError. The Triton
kernels are checked the same way in test_dma_triton.py."""
import pytest
import torch
from dma_packing import assert_packed_equals_alone, documents, random_inputs

from conftest import rel_err
from wonderful_matrices.ops import dynamic_mask_attention
from wonderful_matrices.ops.common import trusted_values
from wonderful_matrices.ops.dma import windowed as dma_torch

# Rows of one length (22): documents of one token, shorter than the window, longer than it; ids need not start
# at 0 nor be consecutive.
LENGTHS = [[5, 1, 13, 3], [22], [2, 9, 11]]
IDS = [[0, 1, 2, 3], [4], [-3, 5, 6]]


@pytest.mark.parametrize("w", [None, 1, 4, 30])
@pytest.mark.parametrize("backend", ["naive", "torch"])
def test_packed_equals_alone(w, backend):
    seq_idx, spans = documents(LENGTHS, IDS)
    q, k, v, bias = random_inputs(3, 22, 4, 2, 8)
    assert_packed_equals_alone(
        lambda q, k, v, bias, s: dynamic_mask_attention(q, k, v, bias, keep_window=w, seq_idx=s, backend=backend),
        q, k, v, bias, seq_idx, spans, 1e-6)


@pytest.mark.parametrize("w,block", [(1, 3), (4, 4), (6, 5), (4, 64)])
def test_torch_selection_blocks_across_documents(w, block):
    """Selection blocks that straddle document boundaries, ties in the bias."""
    seq_idx, spans = documents([[7, 4, 1, 10, 8], [3, 27]])
    q, k, v, bias = random_inputs(2, 30, 2, 1, 8)
    bias = torch.where(torch.isfinite(bias), bias.round(), bias)  # many ties
    assert_packed_equals_alone(
        lambda q, k, v, bias, s: dma_torch.dynamic_mask_attention_torch(q, k, v, bias, w, True, 0.3, block, s),
        q, k, v, bias, seq_idx, spans, 1e-6)


@pytest.mark.parametrize("w", [None, 3])
def test_packed_torch_matches_oracle_float64(w):
    seq_idx, _ = documents(LENGTHS, IDS)
    q, k, v, bias = random_inputs(3, 22, 4, 2, 8, dtype=torch.float64)
    got = dynamic_mask_attention(q, k, v, bias, keep_window=w, seq_idx=seq_idx, backend="torch")
    ref = dynamic_mask_attention(q, k, v, bias, keep_window=w, seq_idx=seq_idx, backend="naive")
    assert rel_err(got, ref) < 1e-12


def test_document_with_only_padded_keys_outputs_zeros():
    seq_idx, _ = documents([[3, 4, 5]])
    q, k, v, bias = random_inputs(1, 12, 2, 1, 4, pad=False)
    bias[0, 3:7] = float("-inf")  # the whole second document is padding
    for w in (None, 2):
        out = dynamic_mask_attention(q, k, v, bias, keep_window=w, seq_idx=seq_idx)
        assert (out[0, 3:7] == 0).all() and (out[0, :3] != 0).all() and (out[0, 7:] != 0).all()


BAD_SEQ_IDX = [
    (dict(seq_idx=torch.zeros(1, 5, dtype=torch.long)), "seq_idx.shape"),
    (dict(seq_idx=torch.zeros(6, dtype=torch.long)), "seq_idx.shape"),
    (dict(seq_idx=torch.zeros(1, 6)), "seq_idx.dtype"),
    (dict(seq_idx=[0] * 6), "seq_idx"),
    (dict(seq_idx=torch.tensor([[0, 0, 1, 1, 0, 2]])), "seq_idx"),
    (dict(seq_idx=torch.zeros(1, 6, dtype=torch.long), causal=False), "causal"),
    (dict(seq_idx=torch.zeros(1, 6, dtype=torch.long), q=torch.randn(1, 4, 4, 8)), "q_len"),
]


@pytest.mark.parametrize("override,argument", BAD_SEQ_IDX, ids=[str(i) for i in range(len(BAD_SEQ_IDX))])
def test_bad_seq_idx_raises_value_error(override, argument):
    args = dict(q=torch.randn(1, 6, 4, 8), k=torch.randn(1, 6, 2, 8), v=torch.randn(1, 6, 2, 8),
                bias=torch.randn(1, 6, 2))
    args.update(override)
    with pytest.raises(ValueError, match=argument):
        dynamic_mask_attention(**args)


def test_monotonicity_is_a_value_check():
    q, k, v, bias = random_inputs(1, 6, 2, 1, 4)
    with trusted_values():  # no host synchronisation: the caller vouches for the ids
        dynamic_mask_attention(q, k, v, bias, seq_idx=torch.tensor([[0, 0, 1, 1, 0, 2]]))
