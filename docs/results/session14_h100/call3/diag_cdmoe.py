"""CDMoE pieces compiled (Dynamo, backend 'eager' / 'aot_eager') against eager on CUDA: relative error of every gradient."""
import sys, time, torch
from wonderful_matrices.layers.cdmoe import CDMoE
import wonderful_matrices.layers.cdmoe as cdm
from wonderful_matrices.ops import product_key_topk, expert_mixture
from wonderful_matrices.ops.common import trusted_values
dev = "cuda" if torch.cuda.is_available() else "cpu"

def rel(a, b):
    if a is None or b is None:
        return f"{'None' if a is None else 'set'}/{'None' if b is None else 'set'}"
    return f"{((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item():.2g}(|c| {a.norm():.2g} |e| {b.norm():.2g})"

def compare(name, fn, inputs, backend):
    torch._dynamo.reset()
    try:
        outs = {}
        for mode in ("eager", "compiled"):
            xs = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
            f = fn if mode == "eager" else torch.compile(fn, backend=backend, fullgraph=True)
            with trusted_values():
                y = f(*xs)
            loss = sum((o.float() * torch.linspace(-1, 1, o.numel(), device=o.device).view(o.shape)).sum()
                       for o in (y if isinstance(y, tuple) else (y,)) if o.is_floating_point())
            loss.backward()
            outs[mode] = (loss.detach(), [t.grad for t in xs])
        print(f"{name} [{backend}]: loss {outs['compiled'][0].item():.6g}/{outs['eager'][0].item():.6g} grads",
              ", ".join(rel(c, e) for c, e in zip(outs['compiled'][1], outs['eager'][1])), flush=True)
    except Exception as exc:
        print(f"{name} [{backend}]: {type(exc).__name__}: {str(exc)[:300]}", flush=True)

g = torch.Generator(device=dev).manual_seed(0)
T, d, N, H, k = 87, 64, 64, 2, 4
x = torch.randn(T, d, device=dev, generator=g)
ids = torch.randint(0, N, (T, H, k), device=dev, generator=g)
gates = torch.rand(T, H, k, device=dev, generator=g)
down = torch.randn(N, d, device=dev, generator=g) / 8
up = torch.randn(N, d, device=dev, generator=g) / 8
q = torch.randn(T, H, 2, 8, device=dev, generator=g)
keys = torch.randn(H, 2, 8, 8, device=dev, generator=g)
for backend in ("eager", "aot_eager"):
    for mix in ("dense", "triton", "torch"):
        compare(f"expert_mixture {mix}", lambda x, i, g_, dn, u, mix=mix: expert_mixture(x, i, g_, dn, u, backend=mix),
                [x, ids, gates, down, up], backend)
    for route in ("triton", "torch"):
        compare(f"product_key_topk {route}", lambda q, kk, route=route: product_key_topk(q, kk, k, backend=route)[0],
                [q, keys], backend)
    for mix in ("auto", "dense", "triton", "torch"):
        torch.manual_seed(0)
        layer = CDMoE(d, 128, N, num_heads=H, top_k=k, retrieval_dim=16, balance_loss_weight=0.01, backend=mix).to(dev)
        params = dict(layer.named_parameters())
        def run(x, *ps, layer=layer):
            out = torch.func.functional_call(layer, dict(zip(params, ps)), (x,))
            return out
        compare(f"CDMoE layer {mix}", run, [x] + list(params.values()), backend)
print("params order:", list(params))

# the whole tiny model, CDMoE backends and routing varied (one training step, packed rows)
import copy
sys.path.insert(0, "tests/train"); sys.path.insert(0, "tests")
from test_compiled_training import _packed_rows, _train_step
from wonderful_matrices.models import CheemsForCausalLM, presets
orig_topk = cdm.product_key_topk
for mix, route, extra in [("auto", "auto", {}), ("dense", "auto", {}), ("dense", "torch", {}), ("torch", "auto", {}),
                          ("triton", "auto", {}), ("auto", "auto", {"balance_loss_weight": 0.0})]:
    cdm.product_key_topk = lambda q, kk, top, backend="auto", route=route: orig_topk(q, kk, top, backend=route)
    t0 = time.time()
    try:
        torch._dynamo.reset(); torch.manual_seed(0)
        model = CheemsForCausalLM(presets.get("cheems-tiny", use_cache=False, cdmoe_backend=mix, **extra)).to(dev).train()
        eager = copy.deepcopy(model)
        compiled = torch.compile(model, backend="eager", fullgraph=True)
        ids = _packed_rows(0, model.config.vocab_size).to(dev)
        loss, gc = _train_step(compiled, model, ids)
        el, ge = _train_step(eager, eager, ids)
        off = [f"{n.replace('model.layers.', 'L')} {rel(gc.get(n), ge[n])}" for n in sorted(ge)
               if gc.get(n) is None or (gc[n] - ge[n]).norm() > 1e-4 * ge[n].norm()]
        print(f"model cdmoe={mix} route={route} {extra}: loss {loss.item():.6f}/{el.item():.6f}, {len(off)} of {len(ge)} off "
              f"({time.time() - t0:.0f} s)", "; ".join(off[:8]), flush=True)
    except Exception as exc:
        print(f"model cdmoe={mix} route={route}: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
cdm.product_key_topk = orig_topk
