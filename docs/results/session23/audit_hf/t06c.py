import torch, copy
from common import *
ids = torch.randint(1, 512, (2, 9), generator=torch.Generator().manual_seed(3))
for name in ["llama-tiny", "cheems-tiny"]:
  for hid in [False, True]:
    m = wm_model(name).train(); ref = copy.deepcopy(m)
    m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    torch.manual_seed(0)
    try:
        a = m(ids, labels=ids, output_hidden_states=hid); a.loss.backward()
    except Exception as e: print(name, hid, "ERR", str(e)[:60]); continue
    r = ref(ids, labels=ids); r.loss.backward()
    print(name, "hid", hid, "loss", a.loss.item(), r.loss.item())
    for (n, p), q in zip(m.named_parameters(), ref.parameters()):
        if q.grad is None: continue
        if p.grad is None: print("  missing grad", n); continue
        if not torch.allclose(p.grad, q.grad, atol=1e-5): print("  diff", n, (p.grad-q.grad).abs().max().item(), q.grad.abs().max().item())
