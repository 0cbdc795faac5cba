"""Functional ops. Each op lives in ``ops/<op>/``: ``naive.py`` (the oracle), one module per algorithm named for it
(``ssd/chunked.py``, ``ssd/step.py``, ``dma/windowed.py``, ``dma/selection.py``, ``expert_mixture/gather.py``,
``product_key/two_stage.py``), the Triton kernels (``*_kernels.py``, ``dma/decode.py``), and ``__init__.py`` with
the public function and its ``backend`` dispatch."""
from .dma import dynamic_mask_attention
from .expert_mixture import expert_mixture
from .gated_linear import gated_linear
from .linear_cross_entropy import linear_cross_entropy
from .product_key import product_key_topk
from .rms_norm import gated_rms_norm, gated_rms_norm_linear, rms_norm
from .ssd import ssd, ssd_step

__all__ = ["dynamic_mask_attention", "expert_mixture", "gated_linear", "gated_rms_norm", "gated_rms_norm_linear",
           "linear_cross_entropy", "product_key_topk", "rms_norm", "ssd", "ssd_step"]
