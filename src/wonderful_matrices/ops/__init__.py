"""Functional ops. Each op lives in ``ops/<op>/`` with ``naive.py`` (the oracle), ``torch.py`` (fast, runs
everywhere), optionally ``triton.py`` (GPU kernels), and dispatches on ``backend`` in its ``__init__``."""
from .ssd import ssd, ssd_step
