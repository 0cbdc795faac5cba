"""Edge sizes: N = 1 expert, width 1, and an empty batch (0 tokens) through CDMoE / PEER / PKM / MoE in eval and
training mode (balance loss on)."""
import os
import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
from ref import cdmoe_layer_reference, rel_err
from wonderful_matrices.layers import CDMoE, PEER, PKM, MoE
torch.manual_seed(0)
m = CDMoE(1, 1, 1, num_heads=2, retrieval_dim=2).double()
x = torch.randn(3, 1, dtype=torch.float64)
print("CDMoE N=1 d=1: rel err vs reference", rel_err(m(x), cdmoe_layer_reference(m, x)))
for name, layer in (("CDMoE", CDMoE(8, 4, 16, num_heads=2, top_k=2, retrieval_dim=4, balance_loss_weight=0.1)),
                    ("PEER", PEER(8, 16, num_heads=2, top_k=2, key_dim=4)),
                    ("PKM", PKM(8, 16, num_heads=2, top_k=2, key_dim=4)),
                    ("MoE", MoE(8, 4, 4, 2, balance_loss_weight=0.1))):
    for mode in ("eval", "train"):
        getattr(layer, mode)()
        try:
            y = layer(torch.randn(0, 8, requires_grad=True))
            aux = getattr(layer, "aux_loss", None)
            print(f"{name} {mode}: empty batch -> out {tuple(y.shape)}, aux_loss {None if aux is None else aux.item()}")
        except Exception as e:  # noqa
            print(f"{name} {mode}: empty batch -> {type(e).__name__}: {str(e).splitlines()[0][:160]}")
