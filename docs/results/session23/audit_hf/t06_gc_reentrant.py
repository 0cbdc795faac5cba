# gradient checkpointing with use_reentrant=True (a common user setting, e.g. for PEFT/DeepSpeed scripts)
import torch, copy, sys
from common import *
ids = torch.randint(1, 512, (2, 9), generator=torch.Generator().manual_seed(3))
for name in ["hf-llama", "llama-tiny", "cheems-tiny", "mamba2-tiny", "jamba-tiny", "doge-tiny"]:
    m = (llama_model() if name == "hf-llama" else wm_model(name)).train()
    ref = copy.deepcopy(m)
    m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    try:
        o = m(ids, labels=ids); o.loss.backward()
        r = ref(ids, labels=ids); r.loss.backward()
        ok = all(torch.allclose(p.grad, q.grad, atol=1e-6) if q.grad is not None else p.grad is None
                 for p, q in zip(m.parameters(), ref.parameters()))
        print(name, "ok, grads equal:", ok)
    except Exception as e:
        print(name, "ERR", type(e).__name__, str(e)[:150])
