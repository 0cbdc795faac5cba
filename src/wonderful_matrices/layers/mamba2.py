"""The full Mamba2 block (a baseline of the paper): in-proj, short causal conv, SSD, gated RMSNorm, out-proj.

It is :class:`~wonderful_matrices.layers.ssd.SSDMixer` with the convolution on and RoPE off, plus the
defaults of HF ``Mamba2Config``.

Weights from HF transformers (``transformers.models.mamba2.modeling_mamba2.Mamba2Mixer``) load with no
renaming: the parameter names and shapes are identical —

======================  ===============================  =====================================================
HF key                  ours                             shape
======================  ===============================  =====================================================
``in_proj.weight``      ``in_proj.weight``               (2·h·p + 2·g·n + h, d): rows ``[z, x, B, C, dt]``
``in_proj.bias``        ``in_proj.bias`` (``bias=True``)  (2·h·p + 2·g·n + h,)
``conv1d.weight``       ``conv1d.weight``                (h·p + 2·g·n, 1, conv_kernel), over ``[x, B, C]``
``conv1d.bias``         ``conv1d.bias``                  (h·p + 2·g·n,)
``dt_bias``             ``dt_bias``                      (h,)
``A_log``               ``A_log``                        (h,), ``A = −exp(A_log)``
``D``                   ``D``                            (h,)
``norm.weight``         ``norm.weight``                  (h·p,)
``out_proj.weight``     ``out_proj.weight``              (d, h·p)
======================  ===============================  =====================================================

so ``ours.load_state_dict(hf_mixer.state_dict())`` works (for a whole model, strip HF's
``backbone.layers.{i}.mixer.`` prefix). Build the layer with
:func:`wonderful_matrices.models.convert.mamba2_mixer_kwargs_from_hf_config`.
One behavioural difference to know: the pure-PyTorch path of transformers 5.17 normalises the gated RMSNorm over
the whole inner width, while mamba_ssm's kernels (which trained the published checkpoints) and transformers 5.25
normalise per group of ``h·p / n_groups`` channels. They agree when ``n_groups == 1``; the helper follows the HF
mixer it is given the ``norm.group_size`` of (``norm_groups=1`` without one).
Padding also differs on purpose: HF lets padded tokens decay the state, ours gives them ``dt = 0``.
"""
from __future__ import annotations

from .ssd import SSDMixer


class Mamba2Mixer(SSDMixer):
    """Mamba2 block with the layer contract of docs/architecture.md (``forward(hidden_states, position_ids,
    attention_mask, state)``; ``position_ids`` are ignored, since Mamba2 has no RoPE).

    Args are those of :class:`SSDMixer` without the RoPE ones; defaults follow HF ``Mamba2Config``
    (``chunk_size=256``, ``conv_kernel=4``, conv bias, no linear biases, ``norm_eps=1e-5``). ``norm_groups``
    defaults to ``num_groups`` (mamba_ssm); HF's CPU path corresponds to ``norm_groups=1``.
    The cache holds ``state["ssm_state"]`` (b, h, p, n) and ``state["conv_state"]`` (b, h·p + 2·g·n, k − 1).
    """

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int, state_size: int, num_groups: int = 1,
                 chunk_size: int = 256, conv_kernel: int = 4, conv_bias: bool = True, bias: bool = False,
                 norm_eps: float = 1e-5, norm_groups: int | None = None, dt_min: float = 1e-3,
                 dt_max: float = 0.1, dt_init_floor: float = 1e-4,
                 dt_limit: tuple[float, float] = (0.0, float("inf")),
                 A_init_range: tuple[float, float] = (1.0, 16.0), layer_idx: int | None = None,
                 backend: str = "auto"):
        super().__init__(hidden_size, num_heads, head_dim, state_size, num_groups=num_groups,
                         chunk_size=chunk_size, use_rope=False, use_conv=True, conv_kernel=conv_kernel,
                         conv_bias=conv_bias, bias=bias, norm_eps=norm_eps, norm_groups=norm_groups,
                         dt_min=dt_min, dt_max=dt_max, dt_init_floor=dt_init_floor, dt_limit=dt_limit,
                         A_init_range=A_init_range, layer_idx=layer_idx, backend=backend)
