"""The chunked loss's Triton row kernel (ops/linear_cross_entropy/row_kernels.py): under TRITON_INTERPRET=1 on the CPU
(float32; the kernel's column loop in several steps) against float64 PyTorch, alone and inside
``wm.ops.linear_cross_entropy`` against the whole-logits oracle; compiled for sm_90 (bf16) without a GPU. The CUDA
run of the same path: tests/ops/test_norm_loss_cuda.py."""
import pytest
import torch
from test_linear_cross_entropy_op import inputs, loss_and_grads

import wonderful_matrices as wm
from conftest import compile_for_sm90, compiles_real_kernels, interpreted_only, interpreter_child_test, rel_err
from wonderful_matrices.ops.linear_cross_entropy.naive import linear_cross_entropy_naive

pytest.importorskip("triton")

from wonderful_matrices.ops.linear_cross_entropy import row_kernels

test_interpreted_in_a_subprocess = interpreter_child_test(__file__)


@interpreted_only
@pytest.mark.parametrize("rows,vocab", [(1, 1), (5, 16), (7, 53), (3, 100)])  # one class; one step; tails
@pytest.mark.parametrize("write_grad", [True, False])
def test_rows_match_float64(rows, vocab, write_grad):
    logits = torch.randn(rows, vocab) * 4
    logits[0, 0] = 30.0  # one dominant logit: the online maximum must rescale the running sums
    targets = torch.randint(0, vocab, (rows,))
    weights = torch.rand(rows) + 0.5
    weights[-1] = 0.0  # an ignored row: loss and gradient 0
    exact = logits.double()
    lse = torch.logsumexp(exact, -1)
    want_loss = torch.where(weights > 0, lse - exact.gather(1, targets[:, None]).squeeze(1), 0)
    want_grad = (exact.softmax(-1) - torch.nn.functional.one_hot(targets, vocab)) * weights.double()[:, None]
    work = logits.clone()
    loss = row_kernels.cross_entropy_rows(work, targets, weights, write_grad)
    assert loss.dtype == torch.float32
    assert rel_err(loss, want_loss) < 1e-6
    if write_grad:
        assert rel_err(work, want_grad) < 1e-6 and torch.all(work[-1] == 0)
    else:
        assert torch.equal(work, logits)  # untouched


@interpreted_only
def test_rows_of_a_strided_chunk():
    """A chunk whose rows are longer than the vocabulary (a view into wider storage): the row stride is used."""
    wide = torch.randn(6, 40)
    logits = wide[:, :29]
    targets, weights = torch.randint(0, 29, (6,)), torch.ones(6)
    want = (logits.double().softmax(-1) - torch.nn.functional.one_hot(targets, 29)).float()
    before = wide[:, 29:].clone()
    losses = torch.full((8,), -7.0)
    row_kernels.cross_entropy_rows(logits, targets, weights, True, out=losses[1:7])  # into a slice of a buffer
    assert rel_err(logits, want) < 1e-6 and torch.equal(wide[:, 29:], before)
    assert losses[0] == losses[7] == -7.0 and torch.all(losses[1:7] > 0)


@interpreted_only
@pytest.mark.parametrize("chunk_size", [1, 8, 37, 64])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_loss_through_the_kernel_matches_oracle(chunk_size, reduction):
    hidden, weight, targets = inputs()
    out = loss_and_grads(wm.ops.linear_cross_entropy, hidden, weight, targets, upstream=2.5,
                         reduction=reduction, chunk_size=chunk_size, backend="triton")
    ref = loss_and_grads(linear_cross_entropy_naive, hidden.double(), weight.double(), targets, upstream=2.5,
                         reduction=reduction)
    for name, a, r in zip(("loss", "hidden", "weight"), out, ref):
        assert rel_err(a, r) < 1e-5, name


@interpreted_only
def test_float64_logits_are_refused_by_the_kernel_backend_and_auto_takes_pytorch():
    hidden, weight, targets = inputs(n=6, ignored=())
    with pytest.raises(ValueError, match="backend"):
        wm.ops.linear_cross_entropy(hidden.double(), weight.double(), targets, backend="triton")
    exact = linear_cross_entropy_naive(hidden.double(), weight.double(), targets)
    assert rel_err(wm.ops.linear_cross_entropy(hidden.double(), weight.double(), targets), exact) < 1e-12


@interpreted_only
def test_every_row_ignored_gives_nan_mean_and_zero_gradients():
    hidden, weight, targets = inputs(n=9, ignored=range(9))
    loss, grad_h, grad_w = loss_and_grads(wm.ops.linear_cross_entropy, hidden, weight, targets, chunk_size=4,
                                          backend="triton")
    assert torch.isnan(loss) and torch.all(grad_h == 0) and torch.all(grad_w == 0)


@compiles_real_kernels
@pytest.mark.parametrize("write_grad", [True, False])
def test_row_kernel_compiles_for_sm90(write_grad):
    fn = row_kernels._rows_kernel
    constants = dict(BLOCK=row_kernels.BLOCK_V, WRITE_GRAD=write_grad)
    signature = dict(logits_ptr="*bf16", targets_ptr="*i64", weights_ptr="*fp32", loss_ptr="*fp32", V="i32",
                     stride_row="i32", BLOCK="constexpr", WRITE_GRAD="constexpr")
    compiled = compile_for_sm90(fn, signature, constants, num_warps=4)
    assert "ld.global" in compiled.asm["ptx"]
