"""MoE baseline (loop and grouped), PEER and PKM: definitions, per-token routing, loop == grouped."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import wonderful_matrices.layers.moe as moe_module
from conftest import rel_err
from wonderful_matrices.layers import PEER, PKM, MoE, moe_balance_loss


def moe(implementation="grouped", dtype=torch.float64, **kwargs):
    args = dict(hidden_size=12, intermediate_size=8, num_experts=7, top_k=2, shared_intermediate_size=16)
    args.update(kwargs)
    return MoE(implementation=implementation, **args).to(dtype)


def moe_reference(m: MoE, x):
    """Token by token: softmax router, top-k renormalised, Σ gate·SwiGLU_e(x) + shared(x)."""
    rows = []
    for token in x.reshape(-1, m.hidden_size):
        probs = (m.router.weight @ token).softmax(-1)
        top, ids = probs.topk(m.top_k)
        row = m.shared_expert(token) if m.shared_expert is not None else torch.zeros_like(token)
        for gate, e in zip(top / top.sum(), ids.tolist()):
            g, u = (m.gate_up_proj[e] @ token).chunk(2)
            row = row + gate * (m.down_proj[e] @ (F.silu(g) * u))
        rows.append(row)
    return torch.stack(rows).reshape(x.shape)


def grads(m, x, y, seed=3):
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(y.dtype)
    return torch.autograd.grad(y, [x] + list(m.parameters()), g)


@pytest.mark.parametrize("implementation", ["loop", "grouped"])
@pytest.mark.parametrize("shared", [16, None])
def test_matches_token_by_token_reference(implementation, shared):
    m = moe(implementation, shared_intermediate_size=shared)
    x = torch.randn(2, 5, 12, dtype=torch.float64, requires_grad=True)
    y, y_ref = m(x), moe_reference(m, x)
    assert rel_err(y, y_ref) < 1e-12
    for a, b in zip(grads(m, x, y), grads(m, x, y_ref)):
        assert b.abs().sum() > 0
        assert rel_err(a, b) < 1e-12


@pytest.mark.parametrize("shape", [(1, 12), (3, 7, 12), (40, 12)])
def test_loop_equals_grouped_values_and_gradients(shape):
    loop = moe("loop")
    grouped = moe("grouped")
    grouped.load_state_dict(loop.state_dict())
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    y_loop, y_grouped = loop(x), grouped(x)
    assert rel_err(y_grouped, y_loop) < 1e-13
    for a, b in zip(grads(grouped, x, y_grouped), grads(loop, x, y_loop)):
        assert rel_err(a, b) < 1e-13


def test_grouped_gemm_path_equals_loop(monkeypatch):
    """The grouped-GEMM dispatch (CUDA bf16 in production) run through torch's CPU grouped GEMM in float32,
    with 3 experts per call so the slicing and empty experts are exercised."""
    monkeypatch.setattr(moe_module, "grouped_gemm_usable", lambda x, w: True)
    monkeypatch.setattr(moe_module, "_GROUPS_PER_CALL", 3)
    if moe_module._grouped_mm_function() is None:
        pytest.skip("this torch has no grouped GEMM")
    loop = moe("loop", torch.float32, num_experts=8, top_k=2)
    grouped = moe("grouped", torch.float32, num_experts=8, top_k=2)
    grouped.load_state_dict(loop.state_dict())
    for tokens in (3, 37):  # 3 tokens leave most experts (and whole slices) empty
        x = torch.randn(tokens, 12, requires_grad=True)
        y_loop, y_grouped = loop(x), grouped(x)
        assert rel_err(y_grouped, y_loop) < 1e-6
        for a, b in zip(grads(grouped, x, y_grouped), grads(loop, x, y_loop)):
            assert rel_err(a, b) < 1e-5


class _HostReads(TorchDispatchMode):
    """Counts reads of tensor values on the host (``.item()``, ``.tolist()``, ``bool()``, ...)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("activation", ["silu", "gelu", "relu"])
@pytest.mark.parametrize("tokens", [1, 3, 17])
def test_gathered_path_without_autograd_equals_the_loop(dtype, tol, activation, tokens):
    """Without autograd (decoding), few tokens run as batched products over their gathered expert weights: the
    same values as the per-expert loop, and no host read of the routing (a CUDA graph can record it)."""
    loop = moe("loop", dtype, num_experts=9, top_k=3, activation=activation)
    grouped = moe("grouped", dtype, num_experts=9, top_k=3, activation=activation)
    grouped.load_state_dict(loop.state_dict())
    x = torch.randn(tokens, 1, 12, dtype=dtype)
    with torch.no_grad():
        assert grouped._gathers(x.reshape(-1, 12))
        with _HostReads() as reads:
            y = grouped(x)
        y_loop = loop(x)
    assert reads.count == 0
    assert rel_err(y, y_loop) < tol


def test_gathered_path_respects_its_budget(monkeypatch):
    """Rows whose gathered weights exceed GATHERED_BUDGET, or any call under autograd, take the sorted dispatch."""
    m = moe("grouped", torch.float64)
    x = torch.randn(5, 12, dtype=torch.float64)
    with torch.no_grad():
        assert m._gathers(x)
        monkeypatch.setattr(moe_module, "GATHERED_BUDGET", 5 * m.top_k * 3 * 8 * 12 - 1)
        assert not m._gathers(x)
        monkeypatch.setattr(moe_module, "GATHERED_BUDGET", 5 * m.top_k * 3 * 8 * 12)
        assert m._gathers(x)
    assert not m._gathers(x)


@pytest.mark.parametrize("implementation", ["loop", "grouped"])
def test_a_token_never_depends_on_other_tokens(implementation):
    m = moe(implementation)
    x = torch.randn(2, 6, 12, dtype=torch.float64)
    y = m(x)
    one_by_one = torch.stack([torch.stack([m(x[b, t:t + 1])[0] for t in range(6)]) for b in range(2)])
    assert torch.allclose(y, one_by_one, rtol=0, atol=1e-13)
    x2 = x.clone()
    x2[0, 2] = torch.randn(12, dtype=torch.float64)
    y2 = m(x2)
    keep = torch.ones(2, 6, dtype=torch.bool)
    keep[0, 2] = False
    assert torch.allclose(y[keep], y2[keep], rtol=0, atol=1e-13)


def test_balance_loss_is_aligned_by_expert_id():
    E, T, k = 6, 30, 2
    probs = torch.full((T, E), 1 / E)
    assert abs(moe_balance_loss(probs, torch.randint(0, E, (T, k))).item() - 1) < 1e-6
    peaked = torch.full((T, E), 0.02)
    peaked[:, 4] = 1 - 0.02 * (E - 1)
    ids = torch.stack([torch.full((T,), 4), torch.randint(0, 4, (T,))], dim=1)
    aligned = moe_balance_loss(peaked, ids).item()
    assert abs(aligned - E * (0.5 * 0.9 + 0.5 * 0.02)) < 1e-5  # expert 4: half the selections, 90% of the mass
    # relabel experts by a permutation: probabilities and selections move together, the loss does not change
    pi = torch.randperm(E)
    relabelled = torch.empty_like(peaked)
    relabelled[:, pi] = peaked
    assert abs(moe_balance_loss(relabelled, pi[ids]).item() - aligned) < 1e-5
    m = moe(balance_loss_weight=0.1)
    m(torch.randn(9, 12, dtype=torch.float64))
    assert m.aux_loss is not None and torch.autograd.grad(m.aux_loss, m.router.weight)[0].abs().sum() > 0
    assert moe(balance_loss_weight=0.0).aux_loss is None
    m.eval()
    m(torch.randn(9, 12, dtype=torch.float64))
    assert m.aux_loss is None  # a training loss only


@pytest.mark.parametrize("kwargs,argument", [
    (dict(top_k=8), "top_k"),
    (dict(top_k=0), "top_k"),
    (dict(num_experts=0), "num_experts"),
    (dict(implementation="fused"), "implementation"),
    (dict(shared_intermediate_size=-1), "shared_intermediate_size"),
    (dict(activation="tanh"), "activation"),
    (dict(balance_loss_weight=float("nan")), "balance_loss_weight"),
    (dict(top_k=True), "top_k"),
])
def test_moe_bad_arguments_raise(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        moe(**kwargs)


# ---- PEER and PKM ---------------------------------------------------------------------------------

def brute_force_route(router, x):
    """Score all N experts of every head, take the top k, softmax."""
    H, dk = router.num_heads, router.key_dim // 2
    n = router.keys.shape[2]
    q = router.queries(x).reshape(-1, H, 2, dk)
    full = (torch.einsum("thd,had->tha", q[:, :, 0], router.keys[:, 0])[..., :, None]
            + torch.einsum("thd,hbd->thb", q[:, :, 1], router.keys[:, 1])[..., None, :]).reshape(-1, H, n * n)
    scores, ids = full.topk(router.top_k, dim=-1)
    return scores.softmax(-1), ids


def test_peer_matches_loops():
    m = PEER(10, 49, num_heads=3, top_k=4, key_dim=6).double()
    x = torch.randn(5, 10, dtype=torch.float64)
    gates, ids = brute_force_route(m.router, x)
    ref = torch.stack([sum(gates[t, h, j] * F.gelu(m.down_embed.weight[e] @ x[t]) * m.up_embed.weight[e]
                           for h in range(3) for j, e in enumerate(ids[t, h].tolist())) for t in range(5)])
    assert rel_err(m(x), ref) < 1e-12


def test_pkm_matches_loops():
    m = PKM(10, 36, num_heads=2, top_k=3, key_dim=8).double()
    x = torch.randn(2, 3, 10, dtype=torch.float64)
    gates, ids = brute_force_route(m.router, x.reshape(-1, 10))
    ref = torch.stack([sum(gates[t, h, j] * m.values.weight[e] for h in range(2)
                           for j, e in enumerate(ids[t, h].tolist())) for t in range(6)])
    y = m(x)
    assert y.shape == x.shape and rel_err(y.reshape(-1, 10), ref) < 1e-12
    params = list(m.parameters())
    assert all(g.abs().sum() > 0 for g in torch.autograd.grad(y.square().sum(), params))


@pytest.mark.parametrize("cls", [PEER, PKM])
def test_retrieval_layers_dense_backend_matches_torch(cls):
    """backend="dense" passes through to the expert mixture / the PKM read: output and every gradient equal the
    "torch" backend's in float64."""
    m = cls(8, 16, num_heads=2, top_k=3, key_dim=4, backend="torch").double()
    d = cls(8, 16, num_heads=2, top_k=3, key_dim=4, backend="dense").double()
    d.load_state_dict(m.state_dict())
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    g = torch.randn(2, 5, 8, dtype=torch.float64)
    got, ref = ((module(x), *torch.autograd.grad(module(x), list(module.parameters()), g)) for module in (d, m))
    for a, b in zip(got, ref):
        assert b.abs().sum() > 0
        assert rel_err(a, b) < 1e-12


@pytest.mark.parametrize("cls", [PEER, PKM])
def test_retrieval_layers_are_per_token(cls):
    m = cls(8, 16, num_heads=2, top_k=2, key_dim=4).double()
    x = torch.randn(7, 8, dtype=torch.float64)
    y = m(x)
    assert torch.allclose(y, torch.cat([m(x[t:t + 1]) for t in range(7)]), rtol=0, atol=1e-13)


@pytest.mark.parametrize("cls", [PEER, PKM])
@pytest.mark.parametrize("kwargs,argument", [
    (dict(num_experts=20), "num_experts"),
    (dict(num_experts=16, top_k=5), "top_k"),
    (dict(key_dim=5), "key_dim"),
])
def test_retrieval_bad_arguments_raise(cls, kwargs, argument):
    args = dict(hidden_size=8, num_experts=16, num_heads=2, top_k=2, key_dim=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=argument):
        cls(**args)


@pytest.mark.parametrize("cls", [PEER, PKM])
def test_retrieval_rejects_an_input_of_another_width(cls):
    with pytest.raises(ValueError, match=r"x.shape=\(3, 7\)"):
        cls(8, 16, num_heads=2, top_k=2, key_dim=4)(torch.randn(3, 7))


def test_moe_no_tokens_give_no_balance_loss():
    m = moe(balance_loss_weight=0.1).train()
    assert m(torch.zeros(0, 12, dtype=torch.float64)).shape == (0, 12) and m.aux_loss is None
