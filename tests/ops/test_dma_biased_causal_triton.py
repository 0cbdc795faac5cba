"""The Triton backward of no-window DMA (ops/dma/biased_causal_kernels.py) against the float64 oracle's gradients,
on the CPU under TRITON_INTERPRET=1 (float32, small shapes), in the child process ``test_interpreted_in_a_subprocess``
starts. The forward's output and log-sum-exp it needs come from a dense float64 computation (on a GPU, Flex's).
The same kernels run compiled in test_dma_cuda.py."""
import pytest
import torch
from dma_packing import assert_gradients_match_oracle, dense_flex_stand_in, documents, random_inputs

from conftest import interpreted_only, interpreter_child_test, rel_err

pytest.importorskip("triton")

from wonderful_matrices.ops.dma import biased_causal, biased_causal_kernels
from wonderful_matrices.ops.dma.naive import dynamic_mask_attention_naive
from wonderful_matrices.ops.dma.windowed import MASKED_BIAS

test_interpreted_in_a_subprocess = interpreter_child_test(__file__)


def dense_forward(q, k, v, bias, scale, seq_idx):
    """Output (b, lq, hq, d) and natural-log log-sum-exp (b, hq, lq) of causal attention with a per-key bias, in
    float64 over all pairs; ``+inf`` log-sum-exp (and zero output) for a query that sees no finite-bias key."""
    b, lq, hq, d = q.shape
    lk, hkv = k.shape[1], k.shape[2]
    group = hq // hkv
    keys, values = k.double().repeat_interleave(group, 2), v.double().repeat_interleave(group, 2)
    rows = bias.double().repeat_interleave(group, 2).permute(0, 2, 1)  # (b, hq, lk)
    scores = torch.einsum("bihd,bjhd->bhij", q.double(), keys) * scale + rows[:, :, None, :]
    pos = torch.arange(lq) + lk - lq
    visible = (torch.arange(lk)[None, :] <= pos[:, None])[None, None]
    if seq_idx is not None:
        visible = visible & (seq_idx[:, None, :, None] == seq_idx[:, None, None, :])
    scores = scores.masked_fill(~(visible & torch.isfinite(rows)[:, :, None, :]), float("-inf"))
    lse = torch.logsumexp(scores, -1)
    out = torch.einsum("bhij,bjhd->bihd", torch.nan_to_num(torch.exp(scores - lse[..., None])), values)
    return out, torch.where(torch.isfinite(lse), lse, float("inf"))


def check(b, lq, lk, hq, hkv, d, lengths, strided=False, extra=0, scale=0.3):
    seq_idx = documents(lengths)[0] if lengths else None
    q, k, v, bias = random_inputs(b, lk, hq, hkv, d)
    q = q[:, lk - lq:].contiguous()
    if lengths:  # a document of padding only: its queries see no key
        first = sum(lengths[0][:-1])
        bias[0, first:, :] = float("-inf")
    if strided:  # k, v: (b, h, l, d) storage seen as (b, l, h, d); q: a slice of a fused projection (not dense)
        k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (k, v))
        q = torch.cat([q, torch.randn_like(q)], dim=-1).flatten(2)[..., :hq * d].view(b, lq, hq, d)
        assert not q.is_contiguous()
    ref_leaves = [t.double().requires_grad_() for t in (q, k, v, bias)]
    ref = dynamic_mask_attention_naive(*ref_leaves, None, True, scale, seq_idx)
    dout = torch.randn(ref.shape, dtype=torch.float64)
    want = torch.autograd.grad(ref, ref_leaves, dout)
    out, lse = dense_forward(q, k, v, bias, scale, seq_idx)
    assert rel_err(out, ref) < 1e-12  # the stand-in for Flex's forward is the oracle's forward
    rows = torch.where(torch.isfinite(bias), bias, MASKED_BIAS).permute(0, 2, 1)
    rows = torch.nn.functional.pad(rows, (0, extra), value=MASKED_BIAS).contiguous()  # as the Flex path pads them
    dout32 = dout.float()
    if strided:  # a head dim that is not the last-stride-1 one: the wrapper makes it so
        dout32 = dout32.transpose(2, 3).contiguous().transpose(2, 3)
        assert dout32.stride(-1) != 1
    dq, dk, dv, dbias = biased_causal_kernels.biased_causal_backward(
        q, k, v, rows, out.float(), lse.float(), dout32, scale, seq_idx)
    assert dq.dtype == dk.dtype == dv.dtype == torch.float32 and dbias.shape == (b, hkv, lk)
    assert dq.is_contiguous()
    for name, got, ref_grad in zip("qkv", (dq, dk, dv), want[:3]):
        assert not torch.isnan(got).any(), name
        assert rel_err(got, ref_grad) < 1e-5, name
    finite = torch.isfinite(bias).permute(0, 2, 1)
    assert (dbias[~finite] == 0).all()  # padded keys get no gradient
    assert rel_err(torch.where(finite, dbias, 0), want[3].permute(0, 2, 1)) < 1e-5


# (b, lq, lk, hq, hkv, d, document lengths per row): lengths off the 32-tiles of the interpreter, GQA 2 and 3,
# lq < lk (queries bottom-right aligned), head dims below the 16-wide dot minimum, documents of one token.
CASES = [
    (1, 70, 70, 2, 1, 16, None),
    (2, 45, 100, 4, 2, 32, None),
    (1, 130, 130, 2, 2, 16, [[30, 1, 64, 35]]),
    (2, 97, 97, 3, 1, 8, [[40, 57], [5, 1, 91]]),
]


@interpreted_only
@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_backward_matches_oracle(case):
    check(*case)


@interpreted_only
def test_backward_with_strided_inputs_and_padded_bias_rows():
    check(1, 64, 96, 4, 2, 16, None, strided=True, extra=32)


@interpreted_only
@pytest.mark.parametrize("lq,lk,hq,hkv,lengths", [(150, 150, 4, 2, None), (70, 200, 2, 2, None),
                                                  (150, 150, 4, 2, [[40, 1, 100, 9], [150]])])
def test_path_end_to_end(lq, lk, hq, hkv, lengths, monkeypatch):
    """``dynamic_mask_attention_biased_causal`` with a bias gradient (a dense stand-in for Flex's forward, which the
    CPU runs only eagerly; the kernels' backward): output and every gradient against the float64 oracle, padded
    keys, queries that see no key and a document of one token included."""
    monkeypatch.setattr(biased_causal, "_attend", dense_flex_stand_in)
    seq_idx = documents(lengths)[0] if lengths else None
    q, k, v, bias = random_inputs(2, lk, hq, hkv, 16)
    q = q[:, lk - lq:].contiguous()
    bias[1, :5] = float("-inf")  # row 1's first queries see no key
    leaves = [t.clone().requires_grad_() for t in (q, k, v, bias)]
    out = biased_causal.dynamic_mask_attention_biased_causal(*leaves, 0.25, seq_idx, compiled=False)
    ref_leaves = [t.double().requires_grad_() for t in (q, k, v, bias)]
    ref = dynamic_mask_attention_naive(*ref_leaves, None, True, 0.25, seq_idx)
    assert_gradients_match_oracle(out, leaves, ref, ref_leaves, bias)
