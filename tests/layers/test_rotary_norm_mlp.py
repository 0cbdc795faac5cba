import math

import pytest
import torch

from wonderful_matrices.layers import GatedMLP, RMSNorm, RotaryEmbedding, apply_rotary
from wonderful_matrices.layers.rotary import RotaryTables


def test_rotary_relative_position():
    rope = RotaryEmbedding(16)
    q, k = torch.randn(1, 1, 2, 16), torch.randn(1, 1, 2, 16)
    def score(tq, tk):
        cq, sq = rope(torch.tensor([[tq]]))
        ck, sk = rope(torch.tensor([[tk]]))
        return (apply_rotary(q, cq, sq) * apply_rotary(k, ck, sk)).sum(-1)
    assert torch.allclose(score(7, 3), score(107, 103), atol=1e-4)
    assert not torch.allclose(score(7, 3), score(7, 4), atol=1e-3)


def test_rotary_matches_formula_and_partial_dim():
    rope = RotaryEmbedding(4, theta=100.0)
    x = torch.randn(1, 3, 1, 6)
    cos, sin = rope(torch.tensor([[0, 1, 5]]))
    y = apply_rotary(x, cos, sin)
    t, i = 5, 1
    ang = t * 100.0 ** (-2 * i / 4)
    x1, x2 = x[0, 2, 0, i], x[0, 2, 0, i + 2]
    assert math.isclose(y[0, 2, 0, i].item(), (x1 * math.cos(ang) - x2 * math.sin(ang)).item(), rel_tol=1e-5)
    assert torch.equal(y[..., 4:], x[..., 4:])
    assert torch.allclose(y[:, 0], x[:, 0])


def test_rotary_bad_dim():
    with pytest.raises(ValueError, match="dim"):
        RotaryEmbedding(7)


def test_rmsnorm_and_mlp_shapes():
    x = torch.randn(2, 5, 8)
    y = RMSNorm(8)(x)
    assert torch.allclose(y.pow(2).mean(-1), torch.ones(2, 5), atol=1e-4)
    assert GatedMLP(8, 12)(x).shape == x.shape
    with pytest.raises(ValueError, match="activation"):
        GatedMLP(8, 12, activation="tanh")
    for bad in (dict(intermediate_size=2.5), dict(hidden_size="8"), dict(hidden_size=True)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            GatedMLP(**{"hidden_size": 8, "intermediate_size": 12, **bad})
    for grad in (True, False):  # the training and the inference path
        with torch.set_grad_enabled(grad), pytest.raises(ValueError, match=r"x.shape=\(2, 5, 7\)"):
            GatedMLP(8, 12)(x[..., :7])


def test_rotary_tables_are_built_once_per_dim_theta_and_dtype():
    a, same = RotaryEmbedding(8), RotaryEmbedding(8)
    other_dim, other_theta = RotaryEmbedding(4), RotaryEmbedding(8, 500)
    pos = torch.tensor([[0, 1, 2, 0, 1], [3, 4, 5, 6, 7]])  # a packed row and an offset one
    tables = RotaryTables(pos)
    cos, sin = tables(a)
    assert tables(same)[0] is cos and tables(same)[1] is sin  # another layer of the same (dim, theta) reuses them
    expected = a(pos)
    assert torch.equal(cos, expected[0]) and torch.equal(sin, expected[1])
    for rotary in (other_dim, other_theta):
        assert torch.equal(tables(rotary)[0], rotary(pos)[0])
    cos64 = tables(a, torch.float64)
    assert cos64[0].dtype == torch.float64 and tables(a, torch.float64)[0] is cos64[0]
    assert len(tables.built) == 4


def test_rotary_copies_start_without_frequency_tables():
    import copy
    import pickle

    rotary = RotaryEmbedding(8)
    table = rotary.float32_frequencies(torch.device("cpu"))
    assert rotary.float32_frequencies(torch.device("cpu")) is table  # once per device
    assert torch.equal(table, rotary.frequencies(torch.float32))
    assert copy.deepcopy(rotary).frequency_memo == {} and pickle.loads(pickle.dumps(rotary)).frequency_memo == {}


@pytest.mark.parametrize("output_attentions", [False, True])
def test_model_builds_each_rotary_table_once_per_forward(monkeypatch, output_attentions):
    """Eager: a forward builds the cos/sin tables once per distinct rotary (dim, theta) of its layers (DMA's head dim
    and SSD's state size here), whatever the number of layers; a cached decoding step likewise."""
    from wonderful_matrices import CheemsForCausalLM, presets

    cfg = presets.get("cheems-tiny", head_dim=16, ssd_state_size=8, mixer_types=["ssd", "dma", "ssd", "dma"])
    model = CheemsForCausalLM(cfg).eval()
    built = []
    original = RotaryEmbedding.forward

    def counting(self, position_ids, dtype=torch.float32):
        built.append(self.dim)
        return original(self, position_ids, dtype)

    monkeypatch.setattr(RotaryEmbedding, "forward", counting)
    ids = torch.randint(0, cfg.vocab_size, (2, 9))
    with torch.no_grad():
        out = model(ids, use_cache=True, output_attentions=output_attentions)
        assert sorted(built) == [8, 16]
        built.clear()
        model(ids[:, :1], past_key_values=out.past_key_values, use_cache=True, output_attentions=output_attentions)
    assert sorted(built) == [8, 16]
