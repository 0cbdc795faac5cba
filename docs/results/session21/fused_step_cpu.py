"""Session 21: how far the bf16-autocast training step's gradients are from the float32 step on the CPU, plain and
with the fused norms / loss (tests/models/test_models_cuda.py::test_fused_training_step_bf16_cuda's measurement,
run on the CPU). From the repository root: PYTHONPATH=src:tests python docs/results/session21/fused_step_cpu.py"""
import torch
from conftest import rel_err

import wonderful_matrices as wm
from wonderful_matrices.bench.lm_common import set_fused

for name in ["jamba-tiny", "cheems-tiny", "llama-tiny"]:
    torch.manual_seed(0)
    model = wm.CheemsForCausalLM(wm.presets.get(name)).train()
    x = torch.randint(0, model.config.vocab_size, (4, 100))
    results = {}
    for fused, dtype in ((False, torch.float32), (False, torch.bfloat16), (True, torch.bfloat16)):
        set_fused(model, fused)
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = model(x, labels=x)
        out.loss.backward()
        results[fused, dtype] = out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                                    if p.grad is not None}
    ref_loss, ref = results[False, torch.float32]
    flat = lambda g: torch.cat([v.flatten().float() for v in g.values()])  # noqa: E731
    for fused in (False, True):
        loss, grads = results[fused, torch.bfloat16]
        print(f"{name:12s} {'fused' if fused else 'plain'} bf16 vs float32: loss {rel_err(loss, ref_loss):.2e}, "
              f"gradients {rel_err(flat(grads), flat(ref)):.4f}")
