"""Functional ops. Each op lives in ``ops/<op>/`` with ``naive.py`` (the oracle), ``torch.py`` (fast, runs
everywhere), optionally ``triton.py`` (GPU kernels), and dispatches on ``backend`` in its ``__init__``."""
from .ssd import ssd, ssd_step
from .dma import dynamic_mask_attention
from .expert_mixture import expert_mixture
from .product_key import product_key_topk
