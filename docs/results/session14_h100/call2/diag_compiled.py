"""Which gradients does compiled (aot_eager) cheems-tiny training get wrong on CUDA? Per-parameter relative errors
against eager, for packed and unpacked rows, aot_eager and Dynamo-only ("eager") backends, windowed and no-window."""
import copy, sys, time, torch
sys.path.insert(0, "tests/train"); sys.path.insert(0, "tests")
from test_compiled_training import _packed_rows, EOS
from wonderful_matrices.data.packing import document_position_ids
from wonderful_matrices.models import CheemsForCausalLM, presets
from wonderful_matrices.ops.common import trusted_values

def step(forward, model, ids, packed):
    model.zero_grad(set_to_none=True)
    with trusted_values():
        pos = document_position_ids(ids, EOS) if packed else None
        loss = forward(input_ids=ids, position_ids=pos, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

dev = "cuda" if torch.cuda.is_available() else "cpu"
for name, packed, backend, overrides in [("packed aot_eager", True, "aot_eager", {}),
                                          ("unpacked aot_eager", False, "aot_eager", {}),
                                          ("packed dynamo-eager", True, "eager", {}),
                                          ("packed aot_eager no-window", True, "aot_eager", {"keep_window": None}),
                                          ("packed aot_eager mixer ssd only", True, "aot_eager",
                                           {"mixer_types": ["ssd"] * 4}),
                                          ("packed aot_eager ffn mlp", True, "aot_eager", {"ffn_types": ["mlp"] * 4})]:
    t0 = time.time()
    try:
        torch._dynamo.reset()
        torch.manual_seed(0)
        model = CheemsForCausalLM(presets.get("cheems-tiny", use_cache=False, **overrides)).to(dev).train()
        eager = copy.deepcopy(model)
        compiled = torch.compile(model, backend=backend, fullgraph=True)
        for s in range(2):
            ids = _packed_rows(s, model.config.vocab_size).to(dev)
            loss, g = step(compiled, model, ids, packed)
            el, eg = step(eager, eager, ids, packed)
            bad = []
            for n in sorted(g):
                a, b = g[n].double(), eg[n].double()
                e = ((a - b).norm() / b.norm().clamp_min(1e-30)).item()
                if e > 1e-4:
                    bad.append(f"    {n:50s} {e:.3g} |c| {a.norm():.3g} |e| {b.norm():.3g}")
            print(f"{name} step {s}: loss {loss.item():.6f} / {el.item():.6f}; {len(bad)} of {len(g)} grads off", flush=True)
            print("\n".join(bad[:25]), flush=True)
    except Exception as exc:
        print(f"{name}: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
    print(f"  ({time.time() - t0:.0f} s)", flush=True)
