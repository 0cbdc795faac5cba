"""``wm.ops.linear_cross_entropy`` (chunked) against the whole-logits oracle: loss and both gradients, chunk tails,
ignored rows, both reductions, autocast, argument errors."""
import pytest
import torch

import wonderful_matrices as wm
from conftest import kept_for_backward, rel_err
from wonderful_matrices.ops.linear_cross_entropy.chunked import default_chunk_size
from wonderful_matrices.ops.linear_cross_entropy.naive import linear_cross_entropy_naive


def inputs(n=37, d=24, vocab=53, ignored=(0, 5, 6, 36)):
    hidden = torch.randn(n, d)
    weight = torch.randn(vocab, d) / d ** 0.5
    targets = torch.randint(0, vocab, (n,))
    targets[list(ignored)] = -100
    return hidden, weight, targets


def loss_and_grads(fn, hidden, weight, targets, upstream=1.0, **kwargs):
    h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    loss = fn(h, w, targets, **kwargs)
    (loss * upstream).backward()
    return loss, h.grad, w.grad


@pytest.mark.parametrize("chunk_size", [1, 8, 36, 37, 64])  # one row, a tail of 5, a tail of 1, exact, one chunk
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_chunked_matches_oracle(chunk_size, reduction):
    hidden, weight, targets = inputs()
    out = loss_and_grads(wm.ops.linear_cross_entropy, hidden, weight, targets, upstream=2.5,
                         reduction=reduction, chunk_size=chunk_size)
    ref = loss_and_grads(linear_cross_entropy_naive, hidden.double(), weight.double(), targets, upstream=2.5,
                         reduction=reduction)
    assert out[0].dtype == torch.float32
    for name, a, r in zip(("loss", "hidden", "weight"), out, ref):
        assert rel_err(a, r) < 1e-5, name


def test_float64_and_custom_ignore_index():
    hidden, weight, targets = inputs(n=20, ignored=())
    targets[3] = 7  # ignored as ignore_index=7, even though 7 is a class id
    out = loss_and_grads(wm.ops.linear_cross_entropy, hidden.double(), weight.double(), targets, ignore_index=7,
                         chunk_size=6)
    ref = loss_and_grads(linear_cross_entropy_naive, hidden.double(), weight.double(), targets, ignore_index=7)
    assert out[0].dtype == torch.float64
    for a, r in zip(out, ref):
        assert rel_err(a, r) < 1e-12


def test_autocast_computes_logits_in_its_dtype():
    hidden, weight, targets = inputs(n=40, d=32, vocab=64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss_and_grads(wm.ops.linear_cross_entropy, hidden, weight, targets, chunk_size=16)
        ref = loss_and_grads(linear_cross_entropy_naive, hidden, weight, targets)
    exact = loss_and_grads(linear_cross_entropy_naive, hidden.double(), weight.double(), targets)
    assert out[1].dtype == out[2].dtype == torch.float32
    assert rel_err(out[0], ref[0]) < 1e-5  # the same bf16 logits, the same float32 softmax
    for a, r in zip(out, exact):
        assert rel_err(a, r) < 2e-2


def test_without_gradient_and_when_nothing_counts():
    hidden, weight, targets = inputs()
    with torch.no_grad():
        loss = wm.ops.linear_cross_entropy(hidden.requires_grad_(True), weight, targets, chunk_size=8)
    assert rel_err(loss, linear_cross_entropy_naive(hidden.double(), weight.double(), targets)) < 1e-5
    all_ignored = torch.full_like(targets, -100)
    assert torch.isnan(wm.ops.linear_cross_entropy(hidden, weight, all_ignored))
    assert wm.ops.linear_cross_entropy(hidden, weight, all_ignored, reduction="sum") == 0


def test_default_chunk_size():
    assert default_chunk_size(32768, 768, 32768) == 4096  # 4·d = 3072, up to a power of two
    assert default_chunk_size(10, 64, 512) == 10  # at most n
    assert default_chunk_size(1 << 20, 64, 512) == 1024  # at least 1024
    assert default_chunk_size(1 << 20, 4096, 32768) == 8192  # at most 8192
    assert default_chunk_size(1 << 20, 4096, 1 << 17) == 2048  # logits at most 2^28 elements


@pytest.mark.parametrize("change,match", [
    (dict(hidden=torch.randn(4, 3, 2)), "hidden.shape"),
    (dict(weight=torch.randn(9, 5)), "weight.shape"),
    (dict(targets=torch.zeros(5, dtype=torch.long)), "targets"),
    (dict(targets=torch.tensor([0, 1, 9, 2])), "targets"),
    (dict(reduction="none"), "reduction"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(backend="triton"), "backend"),
])
def test_bad_arguments(change, match):
    args = dict(hidden=torch.randn(4, 3), weight=torch.randn(9, 3), targets=torch.tensor([0, 1, -100, 8]))
    with pytest.raises(ValueError, match=match):
        wm.ops.linear_cross_entropy(**{**args, **change})


def test_compiled_loss_keeps_only_the_gradients_for_the_backward():
    """Under torch.compile the tensors kept from the forward for the backward are AOTAutograd's choice: with the chunk
    loop traced, the partitioner moved the loop's gradient work (needed only by the backward) there and kept
    per-chunk tensors instead — here each chunk's weight-gradient product, on an H100 at 32K tokens every chunk's
    float32 logits (4.3 GB: what chunking exists to avoid). The loop is one opaque operator, so what is kept is its
    two gradients, ``(n, d)`` and ``(V, d)``."""
    n, d, vocab = 64, 8, 96
    hidden, weight, targets = inputs(n=n, d=d, vocab=vocab, ignored=(3,))
    hidden.requires_grad_(), weight.requires_grad_()
    # under autocast, as a model trains (the traced loop's choice depends on it)
    nodes = kept_for_backward(lambda h, w: wm.ops.linear_cross_entropy(h, w, targets, chunk_size=16), hidden, weight,
                              autocast_dtype=torch.bfloat16)
    kept = [node.meta["val"].numel() for node in nodes if isinstance(node.meta.get("val"), torch.Tensor)]
    ref = loss_and_grads(linear_cross_entropy_naive, hidden.detach().double(), weight.detach().double(), targets)
    assert rel_err(hidden.grad, ref[1]) < 2e-2 and rel_err(weight.grad, ref[2]) < 2e-2  # bf16 logits
    assert sum(kept) <= n * d + vocab * d + 2 * n, kept  # the gradients and a few per-row scalars
