"""Which SSD forward kernel loses accuracy? Each intermediate of the Triton forward against the same quantity in
float64 computed from the same (already rounded) inputs.

    PYTHONPATH=src python scripts/ssd_stages.py                  # on a GPU
    TRITON_INTERPRET=1 PYTHONPATH=src python scripts/ssd_stages.py --device cpu --length 200   # the interpreter

Stages: ``cum`` (chunk-local cumulative sum of dt·A), ``cb`` (C·Bᵀ per chunk), ``states`` (the state entering
every chunk after the state pass; the last slot is the final state) and ``y`` (the output). Inputs follow
``tests/ops/test_ssd_cuda.py::test_ssd_cuda`` (b 2, 8 heads x 32, state 64, one group). The first stage whose
error jumps from float32-rounding size (~1e-7) or bf16-rounding size (~4e-3) to percent size is the culprit.
"""
import argparse

import torch

from wonderful_matrices.ops import ssd
from wonderful_matrices.ops.ssd.chunked_kernels import forward_kernels


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def reference_stages(x, dt, A, B, C, D, q):
    """float64 cum (b, h, nc, q), cb (b, nc, g, q, q), states (b, nc + 1, h, p, n) and y of the chunked form."""
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    nc = -(-l // q)
    pad = nc * q - l
    x, dt, B, C = (torch.nn.functional.pad(t.double(), (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, dt, B, C))
    a = (dt * A.double()).view(b, nc, q, h)
    cum = a.cumsum(2).permute(0, 3, 1, 2)  # (b, h, nc, q)
    Bc, Cc = B.view(b, nc, q, g, n), C.view(b, nc, q, g, n)
    cb = torch.einsum("bcign,bcjgn->bcgij", Cc, Bc)
    heads_per_group = h // g
    Bh = Bc.repeat_interleave(heads_per_group, dim=3)  # (b, nc, q, h, n)
    xc, dtc = x.view(b, nc, q, h, p), dt.view(b, nc, q, h)
    scale = torch.exp(cum[..., -1:] - cum).permute(0, 2, 3, 1) * dtc  # (b, nc, q, h)
    chunk_inputs = torch.einsum("bckh,bckhp,bckhn->bchpn", scale, xc, Bh)
    states = torch.zeros(b, nc + 1, h, p, n, dtype=torch.float64, device=x.device)
    for c in range(nc):
        states[:, c + 1] = torch.exp(cum[:, :, c, -1])[..., None, None] * states[:, c] + chunk_inputs[:, c]
    y = ssd(x[:, :l], dt[:, :l], A.double(), B[:, :l], C[:, :l], chunk_size=q, D=D.double(), backend="naive")
    return cum, cb, states, y


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--length", type=int, default=1000)
    parser.add_argument("--chunks", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16", "float16"])
    args = parser.parse_args()
    torch.manual_seed(0)
    b, l, h, p, g, n = 2, args.length, 8, 32, 1, 64
    base = dict(x=torch.randn(b, l, h, p), dt=torch.rand(b, l, h) * 0.1 + 0.01,
                B=torch.randn(b, l, g, n) / n ** 0.5, C=torch.randn(b, l, g, n) / n ** 0.5)
    A, D = -torch.rand(h) - 0.1, torch.randn(h)
    print(f"{'chunk':>5} {'dtype':>9} {'cum':>10} {'cb':>10} {'states':>10} {'final':>10} {'y':>10}")
    for chunk in args.chunks:
        for name in args.dtypes:
            dtype = getattr(torch, name)
            ins = {k: v.to(args.device, dtype) for k, v in base.items()}
            A_, D_ = A.to(args.device), D.to(args.device)
            y, cum, cb, states, _ = forward_kernels(ins["x"], ins["dt"], A_, ins["B"], ins["C"], D_, None, chunk)
            ref = reference_stages(ins["x"], ins["dt"], A_, ins["B"], ins["C"], D_, chunk)
            errs = [rel_err(cum, ref[0]), rel_err(cb, ref[1]), rel_err(states[:, :-1], ref[2][:, :-1]),
                    rel_err(states[:, -1], ref[2][:, -1]), rel_err(y, ref[3])]
            print(f"{chunk:>5} {name:>9} " + " ".join(f"{e:10.2e}" for e in errs), flush=True)


if __name__ == "__main__":
    main()
