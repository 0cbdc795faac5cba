import math

import pytest
import torch

from wonderful_matrices.layers import GatedMLP, RMSNorm, RotaryEmbedding, apply_rotary


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


def test_rotary_tables_are_computed_once_per_position_tensor():
    import gc

    a = b = RotaryEmbedding(8)  # two layers of one model share the instance (share_rotary)
    pos = torch.arange(5)[None].expand(2, 5)
    cos, sin = a(pos)
    assert b(pos)[0] is cos and b(pos)[1] is sin  # the second layer reuses the first one's tables
    assert RotaryEmbedding(8)(pos)[0] is not cos  # another instance has its own memo
    fresh = RotaryEmbedding(8)._tables(pos, torch.float32)
    assert torch.equal(cos, fresh[0]) and torch.equal(sin, fresh[1])
    other = pos.clone()
    assert a(other)[0] is not cos and torch.equal(a(other)[0], cos)  # equal values, another tensor: recomputed
    changed = torch.arange(5)[None].repeat(2, 1)
    first = a(changed)[0]
    changed += 3  # an in-place change: the old tables must not come back
    again = a(changed)[0]
    assert again is not first and torch.equal(again, RotaryEmbedding(8)._tables(changed, torch.float32)[0])
    assert a(pos, torch.float64)[0].dtype == torch.float64  # the dtype is part of the key
    normal_cos = a(pos)[0]
    with torch.inference_mode():
        inference_cos = a(pos)[0]
    assert inference_cos is not normal_cos and a(pos)[0] is normal_cos  # inference-mode tables are kept apart
    del normal_cos, inference_cos, pos, cos, sin, other
    key = (torch.float32, False)
    del changed, again, first
    gc.collect()
    assert key not in a.memo  # the entry goes with its position tensor
    import copy
    import pickle

    kept = torch.arange(3)[None]
    a(kept)
    assert copy.deepcopy(a).memo == {} and pickle.loads(pickle.dumps(a)).memo == {}  # copies start empty


def test_model_layers_share_one_rotary_per_dim():
    """A model's attention-like and SSD layers share one RotaryEmbedding per (dim, theta): one memo per model."""
    from wonderful_matrices import CheemsForCausalLM, presets

    cfg = presets.get("cheems-tiny", head_dim=16, ssd_state_size=8)
    model = CheemsForCausalLM(cfg)
    rotaries = {id(m): m for m in model.modules() if isinstance(m, RotaryEmbedding)}
    assert sorted(m.dim for m in rotaries.values()) == [8, 16]
    mixers = [block.mixer for block in model.model.layers]
    assert all(m.rotary is mixers[0].rotary for m in mixers if m.rotary.dim == 8)
    other = CheemsForCausalLM(cfg)
    assert other.model.layers[0].mixer.rotary is not mixers[0].rotary  # never shared across models
