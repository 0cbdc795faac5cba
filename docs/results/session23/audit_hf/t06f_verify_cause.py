# Verifies the cause of t06: CheemsModel._blocks passes the deferred residual `update` tensor as a keyword; under
# use_reentrant=True checkpointing HF's GradientCheckpointingLayer closes over keyword tensors (not checkpoint inputs).
# Patching the call (scratch only) to pass it positionally makes reentrant checkpointing run with equal gradients.
import torch, copy
from common import *
from wonderful_matrices.models import modeling
from wonderful_matrices.ops.common import trusted_values
from wonderful_matrices.layers.rotary import RotaryTables
def _blocks(self, hidden_states, position_ids, layer_mask, cache, seq_idx, all_hidden, all_attentions):
    assert all_hidden is None and all_attentions is None
    update, tables = None, RotaryTables(position_ids)
    with trusted_values():
        for i, block in enumerate(self.layers):
            state = cache.layer_state(i) if cache is not None else None
            hidden_states, update = block(hidden_states, position_ids, layer_mask, state, seq_idx, False, update, True, tables)
    return hidden_states, update
modeling.CheemsModel._blocks = _blocks
ids = torch.randint(1, 512, (2, 9), generator=torch.Generator().manual_seed(3))
m = wm_model("cheems-tiny", balance_loss_weight=0.0).train(); ref = copy.deepcopy(m)
m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
m(ids, labels=ids).loss.backward(); ref(ids, labels=ids).loss.backward()
print("patched: grads equal:", all(torch.allclose(p.grad, q.grad, atol=1e-6) for p, q in zip(m.parameters(), ref.parameters()) if q.grad is not None))
