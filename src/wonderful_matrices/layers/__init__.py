"""nn.Module layers built on ``wonderful_matrices.ops``: one file per mixer."""
from .mlp import GatedMLP
from .norm import RMSNorm
from .rotary import RotaryEmbedding, apply_rotary
from .cdmoe import CDMoE, product_key_balance_loss
from .moe import MoE, moe_balance_loss
from .peer import PEER, PKM
