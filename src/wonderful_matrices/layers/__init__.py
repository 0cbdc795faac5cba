"""nn.Module layers built on ``wonderful_matrices.ops``: one file per mixer."""
from .attention import Attention
from .cdmoe import CDMoE, product_key_balance_loss
from .dma import DynamicMaskAttention
from .mamba2 import Mamba2Mixer
from .mlp import GatedMLP
from .moe import MoE, moe_balance_loss
from .norm import RMSNorm
from .peer import PEER, PKM
from .rotary import RotaryEmbedding, apply_rotary
from .ssd import GatedRMSNorm, SSDMixer

__all__ = ["Attention", "CDMoE", "product_key_balance_loss", "DynamicMaskAttention", "Mamba2Mixer", "GatedMLP", "MoE",
           "moe_balance_loss", "RMSNorm", "PEER", "PKM", "RotaryEmbedding", "apply_rotary", "GatedRMSNorm", "SSDMixer"]
