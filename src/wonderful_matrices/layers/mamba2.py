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
``backbone.layers.{i}.mixer.`` prefix). Build the layer with :func:`mamba2_mixer_kwargs_from_hf_config`.
One behavioural difference to know: the pure-PyTorch path of transformers 5.17 normalises the gated RMSNorm over
the whole inner width, while mamba_ssm's kernels (which trained the published checkpoints) and transformers 5.25
normalise per group of ``h·p / n_groups`` channels. They agree when ``n_groups == 1``; the helper follows the HF
mixer it is given the ``norm.group_size`` of (``norm_groups=1`` without one).
Padding also differs on purpose: HF lets padded tokens decay the state, ours gives them ``dt = 0``.
"""
from __future__ import annotations

from .ssd import SSDMixer


class Mamba2Mixer(SSDMixer):
    """Mamba2 block with the layer contract of COMMON.md (``forward(hidden_states, position_ids,
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


def mamba2_mixer_kwargs_from_hf_config(config, norm_group_size: int | None = None) -> dict:
    """Constructor kwargs of :class:`Mamba2Mixer` equal to HF ``Mamba2Mixer(config)`` (its PyTorch path).

    ``config`` is an HF ``Mamba2Config`` (read by attribute; transformers is not imported here);
    ``norm_group_size`` is the HF mixer's ``norm.group_size``: newer transformers (5.25) normalise the gated norm
    per group of that many channels, as mamba_ssm; None (transformers 5.17, whose norm has no ``group_size``)
    normalises over the whole inner width. Raises ``ValueError`` if ``hidden_size · expand != num_heads ·
    head_dim`` or the activation is not SiLU.
    """
    inner = int(config.expand * config.hidden_size)
    if inner != config.num_heads * config.head_dim:
        raise ValueError(f"config.expand={config.expand!r} is not allowed: hidden_size*expand ({inner}) must "
                         f"equal num_heads*head_dim ({config.num_heads * config.head_dim})")
    if config.hidden_act not in ("silu", "swish"):
        raise ValueError(f"config.hidden_act={config.hidden_act!r} is not allowed: Mamba2Mixer uses 'silu'")
    return dict(hidden_size=config.hidden_size, num_heads=config.num_heads, head_dim=config.head_dim,
                state_size=config.state_size, num_groups=config.n_groups, chunk_size=config.chunk_size,
                conv_kernel=config.conv_kernel, conv_bias=config.use_conv_bias, bias=config.use_bias,
                norm_eps=config.layer_norm_epsilon,
                norm_groups=1 if norm_group_size is None else inner // norm_group_size, dt_min=config.time_step_min,
                dt_max=config.time_step_max, dt_init_floor=config.time_step_floor,
                dt_limit=tuple(config.time_step_limit))
