"""Mamba2Mixer reproduces HF transformers' Mamba2Mixer (PyTorch path) with the same weights, and caches."""
import pytest
import torch

from conftest import rel_err
from wonderful_matrices.layers import Mamba2Mixer
from wonderful_matrices.models.convert import mamba2_mixer_kwargs_from_hf_config

transformers = pytest.importorskip("transformers")
from transformers import Mamba2Config  # noqa: E402
from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer as HFMamba2Mixer  # noqa: E402


def hf_pair(n_groups, use_bias, chunk_size=8, **overrides):
    cfg = Mamba2Config(hidden_size=32, num_heads=8, head_dim=8, expand=2, state_size=16, n_groups=n_groups,
                       chunk_size=chunk_size, conv_kernel=4, num_hidden_layers=1, vocab_size=64,
                       use_bias=use_bias, **overrides)
    hf = HFMamba2Mixer(cfg, layer_idx=0).eval()
    with torch.no_grad():  # random values everywhere (HF init leaves D = 1, norm = 1, ...)
        for p in hf.parameters():
            p.copy_(0.3 * torch.randn_like(p))
        hf.A_log.copy_(0.5 * torch.randn_like(hf.A_log))
        hf.norm.weight.add_(1.0)
    ours = Mamba2Mixer(**mamba2_mixer_kwargs_from_hf_config(cfg, getattr(hf.norm, "group_size", None))).eval()
    ours.load_state_dict(hf.state_dict(), strict=True)  # identical names and shapes: no mapping
    return cfg, hf, ours


@pytest.mark.parametrize("n_groups", [1, 2, 4])
@pytest.mark.parametrize("use_bias", [False, True])
@pytest.mark.parametrize("length", [1, 8, 21])
def test_matches_hf_mamba2_mixer(n_groups, use_bias, length):
    _, hf, ours = hf_pair(n_groups, use_bias)
    hs = torch.randn(2, length, 32)
    with torch.no_grad():
        expected = hf(hs)
        got = ours(hs, None)
    assert rel_err(got, expected) < 1e-4


def test_norm_groups_matter():
    # transformers 5.17 normalises over the full width, 5.25 per group (mamba_ssm): the other choice differs
    cfg, hf, ours = hf_pair(2, False)
    other = Mamba2Mixer(**{**mamba2_mixer_kwargs_from_hf_config(cfg), "norm_groups": 3 - ours.norm.num_groups}).eval()
    other.load_state_dict(hf.state_dict())
    hs = torch.randn(1, 9, 32)
    with torch.no_grad():
        assert rel_err(other(hs, None), hf(hs)) > 1e-3


def test_dt_limit_is_applied():
    _, hf, ours = hf_pair(1, False, time_step_limit=(0.05, 0.2))
    hs = torch.randn(2, 13, 32)
    with torch.no_grad():
        assert rel_err(ours(hs, None), hf(hs)) < 1e-4


def test_gradients_match_hf():
    _, hf, ours = hf_pair(2, True)
    hs = torch.randn(2, 11, 32)
    gy = torch.randn(2, 11, 32)
    (hf(hs) * gy).sum().backward()
    (ours(hs, None) * gy).sum().backward()
    hf_grads = dict(hf.named_parameters())
    for name, p in ours.named_parameters():
        assert rel_err(p.grad, hf_grads[name].grad) < 1e-4, name


@pytest.mark.parametrize("n_groups", [1, 2])
def test_prefill_then_steps_equals_full_forward(n_groups):
    _, _, ours = hf_pair(n_groups, False)
    ours = ours.double()
    hs = torch.randn(2, 12, 32, dtype=torch.float64)
    full = ours(hs, None)
    state = {}
    pieces = [ours(hs[:, lo:hi], None, None, state) for lo, hi in [(0, 2), (2, 3), (3, 7), (7, 8), (8, 12)]]
    assert rel_err(torch.cat(pieces, 1), full) < 1e-10
    assert state["conv_state"].shape == (2, ours.conv_dim, 3) and state["ssm_state"].shape == (2, 8, 8, 16)


def test_hf_config_that_does_not_fit_is_rejected():
    cfg = Mamba2Config(hidden_size=32, num_heads=8, head_dim=8, expand=2, state_size=16, n_groups=1,
                       num_hidden_layers=1, vocab_size=64)
    cfg.hidden_act = "gelu"
    with pytest.raises(ValueError, match="^config.hidden_act="):
        mamba2_mixer_kwargs_from_hf_config(cfg)
