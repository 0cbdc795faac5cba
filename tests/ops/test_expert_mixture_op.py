"""expert_mixture: the embedding_bag path equals plain loops, forward and gradients."""
import pytest
import torch
from conftest import rel_err
from test_product_key_op import _LargestTensor

from wonderful_matrices.ops import expert_mixture


def make(batch, H, k, N, d, dtype=torch.float64):
    x = torch.randn(*batch, d, dtype=dtype)
    ids = torch.randint(0, N, (*batch, H, k))
    gates = torch.rand(*batch, H, k, dtype=dtype) + 0.1
    down = torch.randn(N, d, dtype=dtype)
    up = torch.randn(N, d, dtype=dtype)
    down[ids.reshape(-1)[0]] = x.reshape(-1, d)[0]  # one positive pre-activation, so relu never gives all zeros
    return x, ids, gates, down, up


def run(backend, x, ids, gates, down, up, activation="silu", grad_seed=1):
    leaves = [t.clone().requires_grad_() for t in (x, gates, down, up)]
    y = expert_mixture(leaves[0], ids, leaves[1], leaves[2], leaves[3], activation=activation, backend=backend)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=torch.float64).to(y.dtype)
    return (y, *torch.autograd.grad(y, leaves, g))


@pytest.mark.parametrize("batch,H,k,N,d", [
    ((1,), 1, 1, 4, 8),         # one token, one expert
    ((5,), 2, 3, 3, 7),         # N < H*k: the same expert appears several times in one token
    ((2, 3), 3, 4, 64, 16),
    ((4, 1, 2), 4, 2, 25, 5),
])
@pytest.mark.parametrize("activation", ["silu", "gelu", "relu"])
def test_matches_loops_float64(batch, H, k, N, d, activation):
    args = make(batch, H, k, N, d)
    got = run("torch", *args, activation=activation)
    ref = run("naive", *args, activation=activation)
    for name, a, b in zip(("y", "x", "gates", "down", "up"), got, ref):
        assert b.abs().sum() > 0, name
        assert rel_err(a, b) < 1e-12, name


def test_matches_loops_float32():
    args64 = make((3, 4), 2, 5, 36, 24)
    ref = run("naive", *args64)
    got = run("torch", *(t.float() if t.is_floating_point() else t for t in args64))
    for name, a, b in zip(("y", "x", "gates", "down", "up"), got, ref):
        assert a.dtype == torch.float32
        assert rel_err(a, b) < 1e-5, name


def test_bfloat16_with_float32_gates():
    x, ids, gates, down, up = make((6,), 2, 4, 49, 32)
    ref = run("naive", x, ids, gates, down, up)
    got = run("torch", x.bfloat16(), ids, gates.float(), down.bfloat16(), up.bfloat16())
    assert got[0].dtype == torch.bfloat16 and got[2].dtype == torch.float32
    for name, a, b in zip(("y", "x", "gates", "down", "up"), got, ref):
        assert rel_err(a, b) < 2e-2, name


def test_int32_ids_accepted():
    x, ids, gates, down, up = make((3,), 2, 2, 9, 4)
    a = expert_mixture(x, ids.int(), gates, down, up)
    b = expert_mixture(x, ids, gates, down, up, backend="naive")
    assert rel_err(a, b) < 1e-12


def test_a_token_depends_only_on_itself():
    x, ids, gates, down, up = make((6,), 2, 3, 16, 8)
    y = expert_mixture(x, ids, gates, down, up)
    x2, ids2, gates2 = x.clone(), ids.clone(), gates.clone()
    x2[3] += 1.0
    ids2[3] = (ids2[3] + 1) % 16
    gates2[3] *= 3
    y2 = expert_mixture(x2, ids2, gates2, down, up)
    keep = torch.arange(6) != 3
    assert torch.equal(y[keep], y2[keep])
    assert not torch.allclose(y[3], y2[3])


def test_no_gathered_rows_materialised():
    """Forward and backward never create a (tokens, H·k, d) or (tokens, N) tensor (visible ATen outputs)."""
    T, H, k, N, d = 32, 4, 8, 512, 128
    x, ids, gates, down, up = make((T,), H, k, N, d, torch.float32)
    leaves = [t.requires_grad_() for t in (x, gates, down, up)]
    with _LargestTensor() as probe:
        expert_mixture(x, ids, gates, down, up).square().sum().backward()
    assert probe.largest <= max(N * d, T * d, T * H * k) < T * H * k * d
    assert all(t.grad is not None for t in leaves)


def test_empty_batch():
    y = expert_mixture(torch.randn(0, 8), torch.zeros(0, 2, 3, dtype=torch.long), torch.rand(0, 2, 3),
                       torch.randn(5, 8), torch.randn(5, 8))
    assert y.shape == (0, 8)


@pytest.mark.parametrize("change,argument", [
    (lambda a: a.update(ids=torch.full((3, 2, 2), 9)), "ids"),               # id = N out of range
    (lambda a: a.update(ids=torch.full((3, 2, 2), -1)), "ids"),
    (lambda a: a.update(ids=a["ids"].float()), "ids.dtype"),
    (lambda a: a.update(ids=torch.zeros(4, 2, 2, dtype=torch.long)), "ids.shape"),
    (lambda a: a.update(gates=torch.rand(3, 2, 3)), "gates.shape"),
    (lambda a: a.update(down=torch.randn(9, 5)), "down.shape"),
    (lambda a: a.update(up=torch.randn(8, 4)), "up.shape"),
    (lambda a: a.update(up=a["up"].double()), "up.dtype"),
    (lambda a: a.update(activation="tanh"), "activation"),
    (lambda a: a.update(backend="triton"), "backend"),
])
def test_bad_arguments_raise(change, argument):
    args = dict(x=torch.randn(3, 4), ids=torch.randint(0, 9, (3, 2, 2)), gates=torch.rand(3, 2, 2),
                down=torch.randn(9, 4), up=torch.randn(9, 4))
    change(args)
    with pytest.raises(ValueError, match=argument.replace(".", r"\.")):
        expert_mixture(**args)
