"""The shared case of the fused SSD decoding step's tests (the interpreter file and the CUDA parity file)."""
import copy

import torch

from wonderful_matrices.layers import SSDMixer


def decode_pair(rope, h, p, n, g, b=2, dt_limit=(0.0, float("inf")), dtype=torch.float32, device="cpu",
                start=0, steps=3, prompt=5, oracle_dtype=torch.float64):
    """A layer (``dtype``, backend "triton" for the decoding steps) and its torch copy in ``oracle_dtype``, both
    filled by the same prompt, then ``steps`` one-token calls -> ``[(y_fused, y_oracle, state_fused,
    state_oracle)]``, one tuple per step."""
    torch.manual_seed(0)
    layer = SSDMixer(24, h, p, n, num_groups=g, rope=rope, dt_limit=dt_limit, backend="torch").to(device)
    with torch.no_grad():  # random, not the initial values: every term of the step matters
        layer.D.uniform_(0.5, 1.5)
        layer.dt_bias.uniform_(-3.0, 0.5)
        layer.norm.weight.uniform_(0.5, 1.5)
    oracle = copy.deepcopy(layer).to(oracle_dtype)
    layer = layer.to(dtype)
    x = torch.randn(b, prompt + steps, 24, dtype=oracle_dtype, device=device)
    pos = (start + torch.arange(prompt + steps, device=device))[None].expand(b, -1)
    state, state_o = {}, {}
    out = []
    with torch.no_grad():
        layer(x[:, :prompt].to(dtype), pos[:, :prompt], None, state)
        oracle(x[:, :prompt], pos[:, :prompt], None, state_o)
        layer.backend = "triton" if device == "cpu" else "auto"
        for t in range(prompt, prompt + steps):
            assert layer._steps_fused(x[:, t:t + 1].to(dtype), None, state, None)
            y = layer(x[:, t:t + 1].to(dtype), pos[:, t:t + 1], None, state)
            y_o = oracle(x[:, t:t + 1], pos[:, t:t + 1], None, state_o)
            out.append((y, y_o, {k: v.clone() for k, v in state.items()}, dict(state_o)))
    return out
