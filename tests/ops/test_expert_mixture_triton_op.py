"""expert_mixture(backend="triton") and weighted_rows(backend="triton") against the plain-loop oracle.

Runs on CPU through the Triton interpreter (``TRITON_INTERPRET=1``, set for this module only; the kernels'
module is re-imported under it with one small autotune configuration — blocks of 4 selections and 16 columns;
the table gradient's tiles of 16 experts taken 16 sorted selections a step — so the cases below cross block
boundaries, and outputs start NaN-poisoned so an unwritten element fails). Shapes are tiny: the interpreter
executes every program in Python.
"""
import importlib

import pytest
import torch

from conftest import rel_err

pytest.importorskip("triton")

from test_expert_mixture_op import make, run

from wonderful_matrices.ops import expert_mixture
from wonderful_matrices.ops.expert_mixture import weighted_rows


@pytest.fixture(scope="module", autouse=True)
def interpreter():
    """Run this module's kernels in the Triton interpreter; restore the compiled module afterwards."""
    # by module name: the attribute ``ops.expert_mixture`` is the function, which shadows the package
    kernels = importlib.import_module("wonderful_matrices.ops.expert_mixture.row_kernels")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "1")
        importlib.reload(kernels)
        yield kernels
    importlib.reload(kernels)


def _float32(args):
    return [t.float() if t.is_floating_point() else t for t in args]


# (batch, H, k, N, d, activation): one token and one expert; N < H·k (an expert repeated inside a token and
# across tokens: several rows per segment); M = 6 and d = 37 not multiples of the blocks (4, 16); N = 13 not a
# multiple of the expert tile (4), with unselected experts (zero gradient rows); two leading dims
CASES = [
    ((1,), 1, 1, 1, 5, "silu"),
    ((7,), 2, 3, 4, 37, "gelu"),
    ((2, 3), 3, 2, 13, 20, "relu"),
    ((9,), 1, 5, 100, 16, "silu"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"b{c[0]}H{c[1]}k{c[2]}N{c[3]}d{c[4]}{c[5]}")
def test_triton_float32_matches_loops(case):
    batch, H, k, N, d, activation = case
    args = make(batch, H, k, N, d)
    ref = run("naive", *args, activation=activation)
    got = run("triton", *_float32(args), activation=activation)
    for name, a, b in zip(("y", "x", "gates", "down", "up"), got, ref):
        assert a.dtype == torch.float32 and torch.isfinite(a).all(), name
        assert b.abs().sum() > 0, name
        assert rel_err(a, b) < 1e-5, name


def test_triton_unselected_experts_get_zero_gradient_and_int32_ids():
    x, ids, gates, down, up = _float32(make((5,), 2, 2, 50, 8))
    ids = ids.int()
    got = run("triton", x, ids, gates, down, up)
    used = torch.zeros(50, dtype=torch.bool)
    used[ids.long().reshape(-1)] = True
    assert (got[3][~used] == 0).all() and (got[4][~used] == 0).all()
    assert (got[3][used].abs().sum(-1) > 0).all()
    ref = run("naive", *make_like(x, ids, gates, down, up))
    assert rel_err(got[0], ref[0]) < 1e-5


def make_like(x, ids, gates, down, up):
    return x.double(), ids.long(), gates.double(), down.double(), up.double()


def test_triton_sort_by_expert(interpreter):
    ids = torch.tensor([[3, 1], [1, 0], [3, 3], [17, 16]])
    sorted_ids, order, bounds = interpreter.sort_by_expert(ids, 20)
    assert interpreter.BLOCK_E == 16 and bounds.tolist() == [0, 6, 8]  # tiles of experts [0, 16), [16, 20)
    assert sorted_ids.tolist() == [0, 1, 1, 3, 3, 3, 16, 17]
    assert ids.reshape(-1)[order].tolist() == sorted_ids.tolist()
    assert order.tolist() == [3, 1, 2, 0, 4, 5, 7, 6]  # stable: equal experts keep token order


# (tokens, H, k, N, d, activation): the brief's expert counts 16, 64 and 1024 with odd token counts, k not a power
# of two and d not a multiple of the column block (16); N = 16 with 99 selections: one tile of 7 steps of 16
@pytest.mark.parametrize("case", [(11, 3, 3, 16, 21, "silu"), (7, 2, 5, 64, 19, "gelu"),
                                  (5, 4, 3, 1024, 17, "relu"), (3, 1, 7, 1024, 33, "silu")],
                         ids=lambda c: f"T{c[0]}H{c[1]}k{c[2]}N{c[3]}d{c[4]}{c[5]}")
def test_triton_expert_counts(case):
    tokens, H, k, N, d, activation = case
    args = make((tokens,), H, k, N, d)
    ref = run("naive", *args, activation=activation)
    got = run("triton", *_float32(args), activation=activation)
    for name, a, b in zip(("y", "x", "gates", "down", "up"), got, ref):
        assert b.abs().sum() > 0, name
        assert rel_err(a, b) < 1e-5, name


def test_triton_repeated_experts_within_a_token():
    """Every token picks the same expert several times (and the other heads' picks repeat it too)."""
    x, ids, gates, down, up = make((6,), 3, 4, 40, 18)
    ids[:, :, 1:3] = ids[:, :, :1]
    ids[:, 2] = ids[:, 0]
    ref = run("naive", x, ids, gates, down, up)
    got = run("triton", *_float32((x, ids, gates, down, up)))
    for name, a, b in zip(("y", "x", "gates", "down", "up"), got, ref):
        assert rel_err(a, b) < 1e-5, name


def test_triton_weighted_rows_matches_loops():
    T, M, N, d = 5, 6, 7, 19
    w = (torch.rand(T, M) + 0.1).requires_grad_()
    ids = torch.randint(0, N, (T, M))
    table = torch.randn(N, d, requires_grad=True)
    y = weighted_rows(w, ids, table, backend="triton")
    w64, t64 = w.detach().double().requires_grad_(), table.detach().double().requires_grad_()
    ref = torch.stack([sum(w64[t, j] * t64[ids[t, j]] for j in range(M)) for t in range(T)])
    g = torch.randn(T, d, dtype=torch.float64)
    got = torch.autograd.grad(y, (w, table), g.float())
    want = torch.autograd.grad(ref, (w64, t64), g)
    assert rel_err(y, ref) < 1e-5
    for a, b in zip(got, want):
        assert rel_err(a, b) < 1e-5


def test_triton_rejects_float64():
    args = make((2,), 1, 2, 4, 3)
    with pytest.raises(ValueError, match="dtype"):
        expert_mixture(*args, backend="triton")


def test_triton_empty_batch():
    y = expert_mixture(torch.randn(0, 8), torch.zeros(0, 2, 3, dtype=torch.long), torch.rand(0, 2, 3),
                       torch.randn(5, 8), torch.randn(5, 8), backend="triton")
    assert y.shape == (0, 8)


def test_triton_table_gradient_with_split_steps(interpreter, monkeypatch):
    """Few experts, many selections each: the steps of a tile are split over programs (float32 partial sums)."""
    monkeypatch.setattr(interpreter, "STEPS_PER_PROGRAM", 1)
    args = make((13,), 2, 5, 20, 19)  # 130 selections over 2 tiles: 4 or 5 steps of 16 per tile
    assert interpreter.step_split(13 * 10, 20, 19) == 4
    ref = run("naive", *args)
    got = run("triton", *_float32(args))
    for name, a, b in zip(("y", "x", "gates", "down", "up"), got, ref):
        assert rel_err(a, b) < 1e-5, name


@pytest.mark.parametrize("tile_e", [32, 64])
def test_triton_table_gradient_with_wider_programs(interpreter, monkeypatch, tile_e):
    """Programs of several tiles of experts (TILE_E, the GPU's autotuner tries them where steps are not split): the
    table gradients of the CASES and of pools that end inside a program (100 experts in programs of 32 or 64)."""
    import triton

    kernel = interpreter._table_grad_kernel
    monkeypatch.setattr(kernel, "configs", [triton.Config({"TILE_E": tile_e, "BLOCK_D": 16}, num_warps=1)])
    monkeypatch.setattr(kernel, "cache", {})
    for batch, H, k, N, d, activation in CASES + [((41,), 2, 4, 100, 24, "silu")]:
        args = make(batch, H, k, N, d)
        ref = run("naive", *args, activation=activation)
        got = run("triton", *_float32(args), activation=activation)
        for name, a, b in zip(("y", "x", "gates", "down", "up"), got, ref):
            assert rel_err(a, b) < 1e-5, (name, N)
    assert kernel.best_config.kwargs["TILE_E"] == tile_e


@pytest.mark.parametrize("frozen", ["down", "up"])
def test_triton_one_table_gradient(frozen):
    """With one table frozen the backward writes the other's gradient alone (one table per launch, not the pair)."""
    x, ids, gates, down, up = make((9,), 2, 3, 40, 21)
    tables = {"down": down, "up": up}
    want = run("naive", x, ids, gates, down, up)[3 if frozen == "up" else 4]
    leaves = {name: t.float().clone().requires_grad_(name != frozen) for name, t in tables.items()}
    y = expert_mixture(x.float(), ids, gates.float(), leaves["down"], leaves["up"], backend="triton")
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).float()
    (got,) = torch.autograd.grad(y, leaves["up" if frozen == "down" else "down"], g)
    assert rel_err(got, want) < 1e-5


def test_table_gradient_configurations_by_split(interpreter):
    """The GPU's autotuner tries the wider programs only where a tile's steps are not split (SPLIT = 1); with split
    steps (partial sums per tile) every configuration it keeps owns one tile."""
    import triton

    configs = [triton.Config({"TILE_E": e, "BLOCK_D": b}, num_warps=w, num_stages=st)
               for e, b, w, st in interpreter.TABLE_GRAD_CONFIGS]
    assert interpreter._prune_table_grad(configs, {"SPLIT": 1}) == configs
    kept = interpreter._prune_table_grad(configs, {"SPLIT": 14})
    assert kept and {c.kwargs["TILE_E"] for c in kept} == {interpreter.BLOCK_E}
    assert {c.kwargs["TILE_E"] for c in configs} == {16, 32, 64, 128}
    assert all(c.kwargs["TILE_E"] % interpreter.BLOCK_E == 0 for c in configs)


def test_step_split_rules(interpreter, monkeypatch):
    monkeypatch.setattr(interpreter, "BLOCK_R", 32)  # the GPU's step
    assert interpreter.step_split(8192 * 128, 2 ** 20, 1024) == 1  # many experts: direct write
    assert interpreter.step_split(8192 * 128, 1024, 1024) == 32    # ~1024 selections per expert
    assert interpreter.step_split(32768 * 32, 2304, 768) == 14     # cheems-base
    assert interpreter.step_split(8192 * 128, 16, 1024) == 64      # capped
    assert interpreter.step_split(10 ** 9, 4096, 4096) == 4        # partial buffer <= PARTIAL_BUDGET elements
    assert interpreter.step_split(10 ** 9, 4096, 4096, tables=2) == 2  # the pair's two buffers within it together


def test_product_key_layers_with_triton_backend_match_torch():
    """CDMoE, PEER and PKM built with backend="triton": output and every parameter gradient equal the torch layer."""
    from wonderful_matrices.layers import PEER, PKM, CDMoE

    for cls, kwargs in ((CDMoE, dict(hidden_size=12, intermediate_size=10, num_experts=25, num_heads=2, top_k=3,
                                     retrieval_dim=6)),
                        (PEER, dict(hidden_size=12, num_experts=25, num_heads=2, top_k=3, key_dim=6)),
                        (PKM, dict(hidden_size=12, num_experts=25, num_heads=2, top_k=3, key_dim=6))):
        fast, ref = cls(**kwargs, backend="triton"), cls(**kwargs, backend="torch")
        ref.load_state_dict(fast.state_dict())
        x = torch.randn(2, 5, 12)
        y, y_ref = fast(x), ref(x)
        g = torch.randn_like(y)
        grads = torch.autograd.grad(y, list(fast.parameters()), g)
        grads_ref = torch.autograd.grad(y_ref, list(ref.parameters()), g)
        assert rel_err(y, y_ref) < 1e-5, cls.__name__
        for (name, _), a, b in zip(fast.named_parameters(), grads, grads_ref):
            assert b.abs().sum() > 0, (cls.__name__, name)
            assert rel_err(a, b) < 1e-5, (cls.__name__, name)
