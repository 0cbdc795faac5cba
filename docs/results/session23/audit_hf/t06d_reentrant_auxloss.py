# use_reentrant=True + output_hidden_states=True (avoids the crash of t06): gradients of the balance (aux) loss are lost
import torch, copy
from common import *
ids = torch.randint(1, 512, (2, 9), generator=torch.Generator().manual_seed(3))
for name, kw in [("cheems-tiny", {}), ("cheems-tiny", {"balance_loss_weight": 0.0}), ("jamba-tiny", {})]:
    m = wm_model(name, **kw).train(); ref = copy.deepcopy(m)
    print(name, kw, "balance_loss_weight", m.config.balance_loss_weight)
    m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    a = m(ids, labels=ids, output_hidden_states=True); a.loss.backward()
    r = ref(ids, labels=ids); r.loss.backward()
    worst = max(((p.grad - q.grad).norm() / q.grad.norm()).item() for p, q in zip(m.parameters(), ref.parameters()) if q.grad is not None)
    print("  loss", a.loss.item(), r.loss.item(), "aux", a.aux_loss, " worst rel grad diff %.2e" % worst)
