"""The fused SSD decoding step (ops/ssd/step_kernels.py, used by ``SSDMixer`` for one-token calls) against the
layer's torch path in float64 (its oracle), on the CPU under TRITON_INTERPRET=1 (float32). Compiled CUDA cases
(bf16/fp16/float32) are in test_ssd_cuda.py.

``test_interpreted_in_a_subprocess`` reruns this file in a child process with ``TRITON_INTERPRET=1``; the
interpreted tests run there.
"""
import pytest
import torch

from conftest import INTERPRETED, interpreted_only, interpreter_child_test, rel_err

pytest.importorskip("triton")

from ssd_decode_cases import decode_pair

from wonderful_matrices.layers import SSDMixer

test_interpreted_in_a_subprocess = interpreter_child_test(__file__)


CASES = [  # rope, h, p, n, g: odd head counts, head dims that are not a multiple of the channel block, n/2 odd
    ("fixed", 3, 20, 10, 1), ("fixed", 6, 8, 16, 3), ("data", 3, 20, 10, 1), ("data", 4, 6, 8, 2),
    ("none", 3, 5, 7, 3), ("none", 2, 33, 4, 1)]


@interpreted_only
@pytest.mark.parametrize("rope,h,p,n,g", CASES)
def test_fused_step_matches_the_torch_step(rope, h, p, n, g):
    for t, (y, y_o, state, state_o) in enumerate(decode_pair(rope, h, p, n, g)):
        assert y.shape == y_o.shape and torch.isfinite(y).all()
        assert rel_err(y, y_o) < 1e-5, t
        assert state["ssm_state"].dtype == torch.float32
        assert rel_err(state["ssm_state"], state_o["ssm_state"]) < 1e-5, t
        if rope == "data":
            assert rel_err(state["rope_angle"], state_o["rope_angle"]) < 1e-6, t


@interpreted_only
def test_fused_step_far_positions_and_dt_limit():
    """Positions near 10^6 (the angle table indexed, not rebuilt) and a dt clamp that binds. The oracle is the
    float32 torch path: float32 angles ``position · inv_freq`` are off by ~0.03 rad from float64 ones there, in the
    layer's torch path as in the kernel, which must compute the same float32 angles."""
    for y, y_o, state, state_o in decode_pair("fixed", 3, 20, 10, 1, dt_limit=(0.01, 0.05), start=1_000_000,
                                              oracle_dtype=torch.float32):
        assert rel_err(y, y_o) < 1e-5
        assert rel_err(state["ssm_state"], state_o["ssm_state"]) < 1e-5


@interpreted_only
def test_state_is_updated_in_place():
    layer = SSDMixer(24, 3, 20, 10, rope="fixed", backend="torch")
    state = {}
    x = torch.randn(1, 4, 24)
    pos = torch.arange(4)[None]
    with torch.no_grad():
        layer(x[:, :3], pos[:, :3], None, state)
        before = state["ssm_state"]
        layer.backend = "triton"
        layer(x[:, 3:], pos[:, 3:], None, state)
    assert state["ssm_state"] is before


@pytest.mark.skipif(INTERPRETED, reason="the CPU without the interpreter")
def test_fused_step_backend_choice_on_cpu():
    layer = SSDMixer(24, 3, 20, 10, rope="fixed")
    state = {}
    x = torch.randn(1, 4, 24)
    with torch.no_grad():
        layer(x[:, :3], torch.arange(3)[None], None, state)
        assert not layer._steps_fused(x[:, 3:], None, state, None)  # "auto" on the CPU: the torch path
        layer.backend = "triton"
        with pytest.raises(ValueError, match="backend"):  # no CUDA, no interpreter here
            layer(x[:, 3:], torch.tensor([[3]]), None, state)
    assert not layer._steps_fused(x[:, 3:], None, state, None)  # autograd on: the torch path
