"""Observation (below the 1e-6 bar, so not counted as a defect): in a float64 model the DMA layers compute their key
bias in float32 (`DynamicMaskAttention.key_bias`, layers/dma.py: `F.softplus(self.dt_proj(v).float())`), so float64
DMA models (cheems, doge) agree between cached/chunked decoding and a full forward only to ~1e-8..1e-7, while every
other mixer (and DMA with mask_form "doge"/"none", whose bias needs no rounding here) agrees to ~1e-15. One float32
ulp of the bias (from 1e-16 differences of `v` between the two paths) is what differs; with a window it could also
flip a top-w choice between two keys whose biases are within one float32 ulp.

Run from the repository root: .venv/bin/python docs/results/session24/audit_gen/dma_float32_bias_precision.py
"""
import warnings

import torch

import wonderful_matrices as wm
from wonderful_matrices.models import presets
from wonderful_matrices.models.cache import CheemsCache

warnings.filterwarnings("ignore")


def rel(a, b):
    return float((a - b).norm() / b.norm())


for family, over in [("llama", {}), ("mamba2", {}), ("cheems", {}), ("doge", {}), ("doge", dict(keep_window=None)),
                     ("doge", dict(dma_mask_form="none")), ("doge", dict(dma_mask_form="doge"))]:
    torch.manual_seed(0)
    m = wm.CheemsForCausalLM(presets.get(f"{family}-tiny", initializer_range=0.6, **over)).to(torch.float64).eval()
    worst = 0.0
    for seed in range(3):
        torch.manual_seed(seed)
        ids = torch.randint(0, 512, (2, 56))
        with torch.no_grad():
            ref = m(ids, use_cache=False).logits
            c = CheemsCache(m.config)
            a = m(ids[:, :48], past_key_values=c, use_cache=True, prefill_chunk_tokens=5).logits
            b = torch.cat([m(ids[:, t:t + 1], past_key_values=c, use_cache=True).logits for t in range(48, 56)], 1)
        worst = max(worst, rel(a, ref[:, :48]), max(rel(b[:, i], ref[:, 48 + i]) for i in range(8)))
    print(f"{family:7s} {str(over):28s} float64 chunked prefill + 8 steps vs full forward: worst rel err {worst:.1e}")
