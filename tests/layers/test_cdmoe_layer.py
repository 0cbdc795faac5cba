"""CDMoE layer: the DESIGN definition, per-token routing, MLP and Doge initialisation, the balance loss."""
import pytest
import torch

from conftest import rel_err
from wonderful_matrices.layers import CDMoE, GatedMLP, product_key_balance_loss
from wonderful_matrices.models.convert import cdmoe_from_doge
from wonderful_matrices.ops import expert_mixture, product_key_topk


def layer(dtype=torch.float64, **kwargs):
    args = dict(hidden_size=12, intermediate_size=20, num_experts=36, num_heads=2, top_k=3, retrieval_dim=8)
    args.update(kwargs)
    return CDMoE(**args).to(dtype)


def reference(m: CDMoE, x):
    """docs/design.md's definition with the oracle backends (brute-force top-k over all N, looped mixture)."""
    q = m.queries(x).unflatten(-1, (m.num_heads, 2, m.retrieval_dim // 2))
    scores, ids = product_key_topk(q, m.keys, m.top_k, backend="naive")
    private = expert_mixture(x, ids, scores.softmax(-1), m.down_embed.weight, m.up_embed.weight, backend="naive")
    shared = m.down_proj(torch.nn.functional.silu(m.gate_proj(x)) * m.up_proj(x))
    return shared + private


def test_matches_definition_values_and_gradients():
    m = layer()
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    y, y_ref = m(x), reference(m, x)
    assert rel_err(y, y_ref) < 1e-12
    g = torch.randn_like(y)
    params = [p for _, p in m.named_parameters()]
    got = torch.autograd.grad(y, params, g)
    ref = torch.autograd.grad(y_ref, params, g)
    for (name, _), a, b in zip(m.named_parameters(), got, ref):
        assert b.abs().sum() > 0, name
        assert rel_err(a, b) < 1e-12, name


@pytest.mark.parametrize("activation", ["silu", "gelu"])
def test_dense_backend_matches_torch_backend(activation):
    """backend="dense" (the expert mixture as matrix products over all experts) against "torch": the output and
    the gradient of every parameter and of the input, in float64."""
    m = layer(activation=activation, backend="torch")
    d = layer(activation=activation, backend="dense")
    d.load_state_dict(m.state_dict())
    x = torch.randn(3, 7, 12, dtype=torch.float64)
    g = torch.randn(3, 7, 12, dtype=torch.float64)
    results = []
    for module in (d, m):
        leaf = x.clone().requires_grad_()
        y = module(leaf)
        results.append((y, *torch.autograd.grad(y, [leaf, *module.parameters()], g)))
    names = ["y", "x"] + [name for name, _ in m.named_parameters()]
    for name, a, b in zip(names, *results):
        assert b.abs().sum() > 0, name
        assert rel_err(a, b) < 1e-12, name


def test_float32_and_bfloat16_close_to_float64():
    m = layer()
    x = torch.randn(7, 12, dtype=torch.float64)
    ref = m(x)
    m32 = layer(torch.float32)
    m32.load_state_dict(m.state_dict())
    assert rel_err(m32(x.float()), ref) < 1e-5
    m16 = layer(torch.bfloat16)
    m16.load_state_dict(m.state_dict())
    # bf16 may pick a different expert where two scores round together; compare on tokens whose ids agree
    ids16 = m16.route(m16.query(x.bfloat16()))[1]
    ids64 = m.route(m.query(x))[1]
    same = (ids16 == ids64).all(-1).all(-1)
    assert same.sum() >= 4
    assert rel_err(m16(x.bfloat16())[same], ref[same]) < 3e-2


def test_a_token_never_depends_on_other_tokens():
    """docs/design.md, defect 1: batched output equals token-by-token output, and editing one token changes only it."""
    m = layer()
    x = torch.randn(3, 6, 12, dtype=torch.float64)
    y = m(x)
    one_by_one = torch.stack([torch.stack([m(x[b, t:t + 1])[0] for t in range(6)]) for b in range(3)])
    assert torch.allclose(y, one_by_one, rtol=0, atol=1e-13)
    x2 = x.clone()
    x2[1, 4] = torch.randn(12, dtype=torch.float64)
    y2 = m(x2)
    changed = torch.zeros(3, 6, dtype=torch.bool)
    changed[1, 4] = True
    assert torch.equal(y[~changed], y2[~changed])
    assert not torch.allclose(y[changed], y2[changed])


def test_dense_mlp_checkpoint_initialises_the_shared_part():
    mlp = GatedMLP(12, 20).double()
    m = CDMoE.from_mlp(mlp, num_experts=16, num_heads=2, top_k=2, retrieval_dim=6)
    assert m.num_experts == 16 and m.keys.shape == (2, 2, 4, 3)
    x = torch.randn(4, 12, dtype=torch.float64)
    assert torch.equal(m.shared(x), mlp(x))
    with torch.no_grad():
        m.up_embed.weight.zero_()
    assert torch.allclose(m(x), mlp(x), rtol=0, atol=1e-14)
    other = layer()
    other.load_mlp(mlp.state_dict())
    assert torch.equal(other.gate_proj.weight, mlp.gate_proj.weight)
    with pytest.raises(ValueError, match="mlp"):
        other.load_mlp({"gate_proj.weight": mlp.gate_proj.weight})
    with pytest.raises(ValueError, match="shape"):
        layer(hidden_size=12, intermediate_size=21).load_mlp(mlp)


def _doge(num_experts=25, top_k=3, hidden_act="silu"):
    from transformers import DogeConfig
    from transformers.models.doge.modeling_doge import DogeCDMoE

    config = DogeConfig(hidden_size=16, intermediate_size=24, num_experts=num_experts,
                        num_experts_per_tok=top_k, is_moe=True, hidden_act=hidden_act)
    hf = DogeCDMoE(config).double()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(std=0.3)
    return hf


@pytest.mark.parametrize("hidden_act", ["silu", "gelu"])
def test_loads_hf_doge_cdmoe_and_matches_it_token_by_token(hidden_act):
    hf = _doge(hidden_act=hidden_act)
    ours = cdmoe_from_doge(hf.state_dict(), top_k=3, activation=hidden_act)
    x = torch.randn(1, 6, 16, dtype=torch.float64)
    per_token = torch.cat([hf(x[:, t:t + 1])[0] for t in range(6)], dim=1)
    assert rel_err(ours(x), per_token) < 1e-12
    # HF's batched call reshapes router logits across tokens (defect 1): it disagrees with its own per-token
    # output, and a token's output moves when a later token changes. Ours does neither.
    assert rel_err(hf(x)[0], per_token) > 1e-3
    x2 = x.clone()
    x2[0, 3] += 1  # HF views (6, 2√N) logits as (2, 6, √N): token 0 takes its second half from token 3's row
    assert not torch.allclose(hf(x)[0][0, 0], hf(x2)[0][0, 0])
    assert torch.equal(ours(x)[0, :3], ours(x2)[0, :3])


def test_doge_with_non_square_experts_is_refused():
    hf = _doge(num_experts=20, top_k=2)  # HF silently uses floor(√20)² = 16 of them
    with pytest.raises(ValueError, match="down_embed"):
        cdmoe_from_doge(hf.state_dict(), top_k=2)


def test_balance_loss_uniform_is_one_and_concentration_raises_it():
    n, H, T, k = 5, 2, 25, 2
    # uniform probabilities give 1 whatever the usage; uniform usage gives 1 whatever the probabilities
    assert abs(product_key_balance_loss(torch.zeros(T, H, 2, n), torch.randint(0, n * n, (T, H, k))).item() - 1) < 1e-6
    sweep = ((torch.arange(T)[:, None] * k + torch.arange(k)) % (n * n))[:, None, :].expand(T, H, k)
    assert abs(product_key_balance_loss(torch.randn(T, H, 2, n), sweep).item() - 1) < 1e-6
    # every token strongly prefers sub-key 3 of half 0 and uses it: loss -> (n + 1) / 2 (half 1 uniform)
    peaked = torch.zeros(T, H, 2, n)
    peaked[..., 0, 3] = 30.0
    ids_peaked = 3 * n + torch.randint(0, n, (T, H, k))
    value = product_key_balance_loss(peaked, ids_peaked).item()
    half1 = product_key_balance_loss(torch.zeros(T, H, 2, n), ids_peaked).item()
    assert value > 2.5 and abs(value - (n + 1) / 2) < 0.2 + abs(half1 - (n + 1) / 2)
    # aligned by sub-key: moving the preference to sub-key 0 (the rank order is unchanged) gives the same value
    peaked0 = torch.zeros(T, H, 2, n)
    peaked0[..., 0, 0] = 30.0
    assert abs(product_key_balance_loss(peaked0, ids_peaked % n).item() - value) < 1e-5
    # preference and usage on different sub-keys is not penalised like agreement
    assert product_key_balance_loss(peaked0, ids_peaked).item() < 1.0


@pytest.mark.parametrize("T", [9, 150])  # fewer tokens than the counts' copies, and more (tokens wrap around them)
def test_balance_loss_matches_loop_formula(T):
    n, H, k = 4, 3, 2
    scores = torch.randn(T, H, 2, n)
    ids = torch.randint(0, n * n, (T, H, k))
    total = 0.0
    for h in range(H):
        for c in range(2):
            p = scores[:, h, c].softmax(-1).mean(0)
            sub = ids[:, h] // n if c == 0 else ids[:, h] % n
            f = torch.tensor([(sub == a).sum().item() / (T * k) for a in range(n)])
            total += n * (f * p).sum().item()
    assert abs(product_key_balance_loss(scores, ids).item() - total / (2 * H)) < 1e-6


def test_layer_balance_loss_permutes_consistently_and_trains_the_router():
    m = layer(balance_loss_weight=0.5)
    x = torch.randn(20, 12, dtype=torch.float64)
    y = m(x)
    loss = m.aux_loss
    assert loss is not None and loss.dim() == 0 and loss.item() > 0
    grads = torch.autograd.grad(loss, [m.keys, m.queries.weight])
    assert all(g.abs().sum() > 0 for g in grads)
    # relabel half-0 sub-keys by a permutation pi: expert (a, b) becomes (pi[a], b); permute the tables to match
    n = m.num_keys
    pi = torch.randperm(n)
    new_id = (pi[:, None] * n + torch.arange(n)[None, :]).reshape(-1)  # old id a*n+b -> pi[a]*n+b
    p = layer(balance_loss_weight=0.5)
    p.load_state_dict(m.state_dict())
    with torch.no_grad():
        p.keys[:, 0, pi] = m.keys[:, 0]
        p.down_embed.weight[new_id] = m.down_embed.weight
        p.up_embed.weight[new_id] = m.up_embed.weight
    assert torch.allclose(p(x), y, rtol=0, atol=1e-12)
    assert torch.equal(p.route(p.query(x))[1], new_id[m.route(m.query(x))[1]])
    assert abs(p.aux_loss.item() - loss.item()) < 1e-12
    assert layer()(x) is not None and layer().aux_loss is None
    m.eval()
    assert torch.equal(m(x), y) and m.aux_loss is None  # a training loss only: nothing to compute in eval/decoding


@pytest.mark.parametrize("kwargs,argument", [
    (dict(num_experts=16348), "num_experts"),   # docs/design.md, defect 6: the published non-square default
    (dict(num_experts=36, top_k=7), "top_k"),   # k > √N
    (dict(top_k=0), "top_k"),
    (dict(retrieval_dim=7), "retrieval_dim"),
    (dict(num_heads=0), "num_heads"),
    (dict(activation="tanh"), "activation"),
    (dict(balance_loss_weight=-1.0), "balance_loss_weight"),
    (dict(balance_loss_weight=float("inf")), "balance_loss_weight"),
    (dict(balance_loss_weight="0.1"), "balance_loss_weight"),
    (dict(balance_loss_weight=None), "balance_loss_weight"),
    (dict(top_k=True), "top_k"),      # a bool is not a size
    (dict(num_heads=True), "num_heads"),
    (dict(hidden_size=True), "hidden_size"),
    (dict(backend="naive"), "backend"),
])
def test_bad_arguments_raise(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        layer(**kwargs)


def test_wrong_width_raises():
    with pytest.raises(ValueError, match="hidden_states"):
        layer()(torch.randn(3, 11, dtype=torch.float64))


def test_default_top_k():
    assert CDMoE(8, 8, 16).top_k == 4 and CDMoE(8, 8, 1024).top_k == 8


def test_runs_under_bfloat16_autocast():
    m = layer(torch.float32, balance_loss_weight=0.1)
    x = torch.randn(2, 3, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
        (y.float().square().mean() + m.aux_loss).backward()
    assert rel_err(y.float(), m(x)) < 3e-2
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in m.parameters())


def test_autocast_casts_a_float32_input_once_for_the_whole_layer():
    """Under autocast a float32 input (the normed residual stream) is cast to the autocast dtype once: the layer
    then equals itself on that cast input, the mixture included, and the input's gradient comes back float32."""
    m = layer(torch.float32)
    x = torch.randn(2, 7, 12, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
        y_cast = m(x.detach().bfloat16())
    assert y.dtype == torch.bfloat16 and torch.equal(y, y_cast)
    assert rel_err(y.float(), m(x)) < 3e-2
    y.float().square().sum().backward()
    assert x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_no_tokens_give_no_balance_loss():
    """A training call over no tokens returns no rows and no loss (a mean over no tokens would be NaN)."""
    m = layer(balance_loss_weight=0.1).train()
    out = m(torch.zeros(0, 12, dtype=torch.float64))
    assert out.shape == (0, 12) and m.aux_loss is None
