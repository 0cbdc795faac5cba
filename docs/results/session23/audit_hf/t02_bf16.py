import torch
from common import *
ids = torch.randint(0, 512, (2, 9), generator=torch.Generator().manual_seed(1))
for name, kw in [("doge-tiny", {}), ("doge-tiny", {"keep_window": 64}), ("doge-tiny", {"ffn_types": ["mlp"]*4}),
                 ("doge-tiny", {"keep_window": 64, "ffn_types": ["mlp"]*4}), ("cheems-tiny", {"ffn_types": ["mlp"]*4}),
                 ("cheems-tiny", {})]:
    m = wm_model(name, **kw)
    with torch.no_grad():
        ref = m(ids).logits
        mb = wm_model(name, **kw).to(torch.bfloat16)
        out = mb(ids).logits.float()
    print(name, kw, "maxdiff %.4f rel %.4f" % ((out-ref).abs().max(), (out-ref).norm()/ref.norm()))
