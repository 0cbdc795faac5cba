"""nn.Module layers built on ``wonderful_matrices.ops``: one file per mixer."""
from .attention import Attention
from .mlp import GatedMLP
from .norm import RMSNorm
from .rotary import RotaryEmbedding, apply_rotary
from .mamba2 import Mamba2Mixer, mamba2_mixer_kwargs_from_hf_config
from .ssd import GatedRMSNorm, SSDMixer
