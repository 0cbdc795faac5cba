"""Where and why SSD y is off at chunk 64 in half precision on the GPU: per-chunk error, config variants."""
import sys, torch
sys.path.insert(0, "scripts")
from ssd_stages import reference_stages, rel_err
from wonderful_matrices.ops.ssd import chunked_kernels as ck
dev = "cuda" if torch.cuda.is_available() else "cpu"
torch.manual_seed(0)
def case(l, chunk, dtype, label):
    b, h, p, g, n = 2, 8, 32, 1, 64
    base = dict(x=torch.randn(b, l, h, p), dt=torch.rand(b, l, h) * 0.1 + 0.01,
                B=torch.randn(b, l, g, n) / n ** 0.5, C=torch.randn(b, l, g, n) / n ** 0.5)
    A, D = -torch.rand(h) - 0.1, torch.randn(h)
    ins = {k: v.to(dev, dtype) for k, v in base.items()}
    A_, D_ = A.to(dev), D.to(dev)
    y, cum, cb, states, _ = ck.forward_kernels(ins["x"], ins["dt"], A_, ins["B"], ins["C"], D_, None, chunk)
    ref = reference_stages(ins["x"], ins["dt"], A_, ins["B"], ins["C"], D_, chunk)
    ry = ref[3]
    q = chunk; nc = -(-l // q)
    per = [rel_err(y[:, c*q:(c+1)*q], ry[:, c*q:(c+1)*q]) for c in range(nc)]
    bad = [(c, f"{e:.1e}") for c, e in enumerate(per) if e > 1e-2]
    cbr = rel_err(cb, ref[1])
    print(f"{label:40} l={l} q={chunk} {str(dtype):15} y {rel_err(y, ry):.2e} cb {cbr:.1e} bad chunks {bad[:8]}", flush=True)
    if bad:
        c = max(range(nc), key=lambda i: per[i])
        rows = [(r, f"{rel_err(y[:, c*q+r], ry[:, c*q+r]):.0e}") for r in range(min(q, l - c*q))]
        print("   worst chunk", c, "row errors", [x for x in rows if float(x[1]) > 1e-2][:20], flush=True)
for l in ((1000, 1024) if dev == "cuda" else (200,)):
    for dt in (torch.bfloat16, torch.float16, torch.float32):
        case(l, 64, dt, "default")
for name in (("output", "cb", "chunk_state") if dev == "cuda" else ()):
    for cfg in ((4, 1), (4, 3), (8, 2), (8, 1)):
        old = ck.CONFIG[name]; ck.CONFIG[name] = cfg
        case(1000, 64, torch.bfloat16, f"{name}={cfg}")
        ck.CONFIG[name] = old

import wonderful_matrices as wm
def grads_case(chunk, dtype, label, l=1000, h=8, g=1, p=32, n=64):
    b = 2
    gen = torch.Generator().manual_seed(l + h)
    base = {"x": torch.randn(b, l, h, p, generator=gen), "dt": torch.rand(b, l, h, generator=gen) * 0.1 + 0.01,
            "A": -torch.rand(h, generator=gen) - 0.1, "B": torch.randn(b, l, g, n, generator=gen) / n ** 0.5,
            "C": torch.randn(b, l, g, n, generator=gen) / n ** 0.5, "D": torch.randn(h, generator=gen),
            "initial_state": torch.randn(b, h, p, n, generator=gen)}
    gy = torch.randn(b, l, h, p, generator=gen, dtype=torch.float64)
    gs = torch.randn(b, h, p, n, generator=gen, dtype=torch.float64)
    def run(inputs, name):
        leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
        y, final = wm.ops.ssd(**leaves, chunk_size=chunk, return_final_state=True, backend=name)
        ((y.double() * gy.to(y.device)).sum() + (final.double() * gs.to(y.device)).sum()).backward()
        return y.detach(), final.detach(), {k: v.grad for k, v in leaves.items()}
    half = ("x", "B", "C")
    ins = {k: v.to(dev, dtype if k in half else torch.float32) for k, v in base.items()}
    ref = run({k: v.to(dev).to(dtype).double() if k in half else v.to(dev).double() for k, v in base.items()}, "naive")
    y, final, gr = run(ins, "triton")
    errs = {"y": rel_err(y, ref[0]), "final": rel_err(final, ref[1])}
    errs.update({f"d{k}": rel_err(v, ref[2][k]) for k, v in gr.items()})
    print(f"{label:40} q={chunk} {str(dtype):15} " + " ".join(f"{k} {v:.1e}" for k, v in errs.items()), flush=True)
grads_case(64, torch.bfloat16, "grads default")
grads_case(128, torch.bfloat16, "grads default")
old = dict(ck.CONFIG)
ck.CONFIG["output"] = (4, 1)
grads_case(64, torch.bfloat16, "grads output=(4,1)")
grads_case(64, torch.float16, "grads output=(4,1)")
for k in ck.CONFIG: ck.CONFIG[k] = (ck.CONFIG[k][0], 1)
grads_case(64, torch.bfloat16, "grads all stages 1")
ck.CONFIG.update(old)
