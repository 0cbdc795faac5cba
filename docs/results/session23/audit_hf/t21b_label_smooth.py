import torch, torch.nn.functional as F
from common import *
from transformers.trainer_pt_utils import LabelSmoother
x = torch.randint(0, 32, (4, 16), generator=torch.Generator().manual_seed(0))
for name in ["hf-llama", "cheems-tiny"]:
    m = (llama_model() if name == "hf-llama" else wm_model(name)).train()
    o = m(x)
    ls = LabelSmoother(0.1)(o, x, shift_labels=True)
    lg = o.logits[:, :-1].reshape(-1, 512); t = x[:, 1:].reshape(-1)
    ref = F.cross_entropy(lg, t, label_smoothing=0.1)
    print(name, "LabelSmoother %.4f  F.cross_entropy(label_smoothing) %.4f  nll %.4f  logit std %.3f" % (ls.item(), ref.item(), F.cross_entropy(lg, t).item(), lg.std().item()))
