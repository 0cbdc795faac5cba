"""``dynamic_mask_attention_weights`` (the dense probabilities behind ``output_attentions``) against the oracle."""
import pytest
import torch

from conftest import rel_err
from wonderful_matrices.ops.dma.naive import dynamic_mask_attention_naive, kept_keys
from wonderful_matrices.ops.dma.weights import dynamic_mask_attention_weights


@pytest.mark.parametrize("lq,lk,window,causal", [(7, 7, None, True), (13, 13, 4, True), (5, 11, 3, True),
                                                  (6, 9, 4, False), (1, 10, 2, True)])
def test_weights_times_values_is_the_oracle(lq, lk, window, causal):
    g = torch.Generator().manual_seed(lq * 100 + lk)
    b, hq, hkv, d = 2, 4, 2, 8
    q = torch.randn(b, lq, hq, d, generator=g, dtype=torch.float64)
    k = torch.randn(b, lk, hkv, d, generator=g, dtype=torch.float64)
    v = torch.randn(b, lk, hkv, d, generator=g, dtype=torch.float64)
    bias = -torch.rand(b, lk, hkv, generator=g, dtype=torch.float64) * 3
    bias[1, :2] = float("-inf")  # padding
    bias[0, 3] = bias[0, 5]  # a tie (to the later key)
    weights = dynamic_mask_attention_weights(q, k, bias, keep_window=window, causal=causal)
    assert weights.shape == (b, hq, lq, lk) and weights.dtype == torch.float64
    v_per_head = v.repeat_interleave(hq // hkv, dim=2).transpose(1, 2)  # (b, hq, lk, d)
    want = dynamic_mask_attention_naive(q, k, v, bias, window, causal, d ** -0.5)
    assert rel_err((weights @ v_per_head).transpose(1, 2), want) < 1e-12
    for bi in range(b):  # non-zero exactly on the kept keys
        for h in range(hq):
            row_bias = bias[bi, :, h // (hq // hkv)].tolist()
            for i in range(lq):
                kept = kept_keys(row_bias, i + lk - lq, window, causal)
                assert (weights[bi, h, i] > 0).nonzero().flatten().tolist() == kept


def test_float32_inputs_give_float32_weights():
    q, k = torch.randn(1, 3, 2, 4), torch.randn(1, 3, 1, 4)
    weights = dynamic_mask_attention_weights(q, k, torch.zeros(1, 3, 1))
    assert weights.dtype == torch.float32
    assert rel_err(weights.sum(-1), torch.ones(1, 2, 3)) < 1e-6
