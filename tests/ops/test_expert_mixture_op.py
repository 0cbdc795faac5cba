"""expert_mixture: the torch backend's two kernel sets (embedding_bag; chunked gathers, used for half precision
on CUDA and forced here on CPU) equal plain loops, forward and gradients; the PKM read ``weighted_rows``."""
import pytest
import torch
from test_product_key_op import _LargestTensor

from conftest import rel_err
from wonderful_matrices.ops import expert_mixture
from wonderful_matrices.ops.expert_mixture import gather as torch_backend
from wonderful_matrices.ops.expert_mixture import weighted_rows


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


# ---- chunked-gather kernels (the CUDA half-precision path), forced on CPU --------------------------------------

def run_gather(x, ids, gates, down, up, activation="silu", grad_seed=1):
    leaves = [t.clone().requires_grad_() for t in (x, gates, down, up)]
    y = torch_backend.mixture(leaves[0], ids, leaves[1], leaves[2], leaves[3], activation,
                              torch_backend.GatherKernels)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=torch.float64).to(y.dtype)
    return (y, *torch.autograd.grad(y, leaves, g))


@pytest.mark.parametrize("budget", [1, 7 * 6 * 5, 1 << 25])  # one token per chunk; 7 tokens per chunk + a tail; one
@pytest.mark.parametrize("activation", ["silu", "relu"])
def test_gather_kernels_match_loops_float64(monkeypatch, budget, activation):
    monkeypatch.setattr(torch_backend, "GATHER_BUDGET", budget)
    args = make((10,), 2, 3, 5, 7)  # N = 5 < H*k: repeated experts inside a token (index_add_ collisions)
    got = run_gather(*args, activation=activation)
    ref = run("naive", *args, activation=activation)
    for name, a, b in zip(("y", "x", "gates", "down", "up"), got, ref):
        assert b.abs().sum() > 0, name
        assert rel_err(a, b) < 1e-12, name


def test_gather_kernels_float32_and_bfloat16(monkeypatch):
    monkeypatch.setattr(torch_backend, "GATHER_BUDGET", 4 * 8 * 24)
    x, ids, gates, down, up = make((13,), 2, 4, 40, 24)
    ref = run("naive", x, ids, gates, down, up)
    got32 = run_gather(*(t.float() if t.is_floating_point() else t for t in (x, ids, gates, down, up)))
    got16 = run_gather(x.bfloat16(), ids, gates.float(), down.bfloat16(), up.bfloat16())
    assert got16[0].dtype == got16[3].dtype == torch.bfloat16 and got16[2].dtype == torch.float32
    for name, a32, a16, b in zip(("y", "x", "gates", "down", "up"), got32, got16, ref):
        assert rel_err(a32, b) < 1e-5, name
        assert rel_err(a16, b) < 2e-2, name


def test_gather_kernels_bound_their_chunks(monkeypatch):
    T, H, k, N, d = 64, 4, 8, 512, 32
    monkeypatch.setattr(torch_backend, "GATHER_BUDGET", 4 * H * k * d)  # 4 tokens' rows per chunk
    x, ids, gates, down, up = make((T,), H, k, N, d, torch.float32)
    leaves = [t.requires_grad_() for t in (x, gates, down, up)]
    with _LargestTensor() as probe:
        torch_backend.mixture(x, ids, gates, down, up, "silu", torch_backend.GatherKernels).square().sum().backward()
    assert probe.largest <= max(N * d, 4 * H * k * d) < T * H * k * d
    assert all(t.grad is not None for t in leaves)


def test_gather_kernels_chosen_only_for_half_precision_on_cuda():
    assert torch_backend.default_kernels(torch.randn(2, 2, dtype=torch.bfloat16)) is torch_backend.BagKernels
    assert torch_backend.default_kernels(torch.randn(2, 2)) is torch_backend.BagKernels


# ---- weighted_rows (the PKM read) ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_weighted_rows_matches_loops(dtype, tol):
    T, M, N, d = 6, 5, 4, 9
    w = (torch.rand(T, M, dtype=dtype) + 0.1).requires_grad_()
    ids = torch.randint(0, N, (T, M))
    table = torch.randn(N, d, dtype=dtype, requires_grad=True)
    y = weighted_rows(w, ids, table)
    ref = torch.stack([sum(w[t, j] * table[ids[t, j]] for j in range(M)) for t in range(T)])
    g = torch.randn(T, d, dtype=dtype)
    got, want = torch.autograd.grad(y, (w, table), g), torch.autograd.grad(ref, (w, table), g)
    assert rel_err(y, ref) < tol
    for a, b in zip(got, want):
        assert rel_err(a, b) < tol


@pytest.mark.parametrize("kwargs,argument", [
    (dict(ids=torch.zeros(3, 2)), "ids"),
    (dict(weights=torch.rand(3, 3)), "weights.shape"),
    (dict(table=torch.randn(4)), "table.shape"),
    (dict(ids=torch.full((3, 2), 4)), "ids"),
    (dict(backend="naive"), "backend"),
])
def test_weighted_rows_bad_arguments(kwargs, argument):
    args = dict(weights=torch.rand(3, 2), ids=torch.zeros(3, 2, dtype=torch.long), table=torch.randn(4, 5))
    args.update(kwargs)
    with pytest.raises(ValueError, match=argument.replace(".", r"\.")):
        weighted_rows(**args)
