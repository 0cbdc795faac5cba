import torch, warnings
import wonderful_matrices as wm
from wonderful_matrices.models import presets
FAMS = ["cheems", "llama", "mamba2", "jamba", "doge"]
def build(fam, dtype=torch.float64, seed=0, std=0.3, **over):
    torch.manual_seed(seed)
    cfg = presets.get(f"{fam}-tiny", initializer_range=std, **over)
    m = wm.CheemsForCausalLM(cfg).to(dtype).eval()
    return m
@torch.no_grad()
def full_logits(m, ids, mask=None):
    return m(ids, attention_mask=mask, use_cache=False).logits
@torch.no_grad()
def manual_greedy(m, ids, n):
    seq = ids.clone(); steps = []
    for _ in range(n):
        lg = full_logits(m, seq)[:, -1]
        steps.append(lg)
        seq = torch.cat([seq, lg.argmax(-1, keepdim=True)], 1)
    return seq, steps
def rel(a, b):
    return float((a - b).norm() / b.norm())
