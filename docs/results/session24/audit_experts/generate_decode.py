"""5. Model-level decoding: cheems-tiny with cdmoe_backend="triton" (fused CDMoE decode step, TRITON_INTERPRET=1) vs
"torch": generate's per-step scores, and the last-token logits of a full forward over the generated sequence (batch
of 1 and of 2 with left padding)."""
import os
os.environ["TRITON_INTERPRET"] = "1"
import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import warnings
warnings.filterwarnings("ignore")
import torch
import wonderful_matrices as wm
import wonderful_matrices.ops.cdmoe as cd
from ref import rel_err

calls = {"n": 0}
orig = cd._kernels.decode_step
cd._kernels.decode_step = lambda *a, **k: (calls.__setitem__("n", calls["n"] + 1), orig(*a, **k))[1]

torch.manual_seed(0)
models = {}
for b in ("torch", "triton"):
    torch.manual_seed(0)
    models[b] = wm.CheemsForCausalLM(wm.presets.get("cheems-tiny", cdmoe_backend=b)).eval()
models["triton"].load_state_dict(models["torch"].state_dict())
for batch in (1, 2):
    x = torch.randint(0, 512, (batch, 6))
    mask = torch.ones_like(x)
    if batch == 2:
        mask[1, :2] = 0
    outs = {}
    for b, m in models.items():
        with torch.no_grad():
            outs[b] = m.generate(x, attention_mask=mask, max_new_tokens=5, do_sample=False, output_scores=True,
                                 return_dict_in_generate=True)
    s_t = torch.stack(outs["torch"].scores)
    s_k = torch.stack(outs["triton"].scores)
    seq_eq = torch.equal(outs["torch"].sequences, outs["triton"].sequences)
    # full forward over the generated sequence, last positions, vs the decoded step scores
    seq = outs["torch"].sequences
    full_mask = torch.cat([mask, torch.ones(batch, 5, dtype=mask.dtype)], 1)
    with torch.no_grad():
        full = models["torch"](seq, attention_mask=full_mask, use_cache=False).logits[:, 5:-1]
    print(f"batch {batch}: fused decode calls so far {calls['n']}; sequences equal {seq_eq}; step scores rel err "
          f"triton vs torch {rel_err(s_k, s_t):.1e}; torch decode steps vs full forward rel err "
          f"{rel_err(s_t.transpose(0, 1), full):.1e}")
