"""nn.Module layers built on ``wonderful_matrices.ops``: one file per mixer."""
from .attention import Attention
from .mlp import GatedMLP
from .norm import RMSNorm
from .rotary import RotaryEmbedding, apply_rotary
