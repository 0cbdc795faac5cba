"""nn.Module layers built on ``wonderful_matrices.ops``: one file per mixer."""
from .attention import Attention
from .mlp import GatedMLP
from .norm import RMSNorm
from .rotary import RotaryEmbedding, apply_rotary
from .mamba2 import Mamba2Mixer
from .ssd import GatedRMSNorm, SSDMixer
from .dma import DynamicMaskAttention
from .cdmoe import CDMoE, product_key_balance_loss
from .moe import MoE, moe_balance_loss
from .peer import PEER, PKM
