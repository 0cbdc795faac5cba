# same as t06 but output_hidden_states=True (the blocks add as they go: no `update=` kwarg tensor) -> works
import torch, copy
from common import *
ids = torch.randint(1, 512, (2, 9), generator=torch.Generator().manual_seed(3))
m = wm_model("cheems-tiny").train(); ref = copy.deepcopy(m)
m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
m(ids, labels=ids, output_hidden_states=True).loss.backward(); ref(ids, labels=ids).loss.backward()
print("grads equal:", all(torch.allclose(p.grad, q.grad, atol=1e-6) for p, q in zip(m.parameters(), ref.parameters()) if q.grad is not None))
