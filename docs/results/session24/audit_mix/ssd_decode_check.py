"""SSDMixer: prefill + one-token steps (and chunked prefill) == one full forward, every rope mode, conv on/off,
backends (torch/naive/triton: the triton one also takes the fused decode kernel under no_grad)."""
import os
import sys, torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ref import rel
from wonderful_matrices.layers import SSDMixer

backends = sys.argv[1].split(",") if len(sys.argv) > 1 else ["naive", "torch"]
torch.manual_seed(0)
d_model, H, P, N, G = 20, 4, 3, 6, 2
bad = 0
for backend in backends:
    dtype = torch.float32 if backend == "triton" else torch.float64
    tol = 3e-5 if dtype == torch.float32 else 1e-10
    for rope in ["fixed", "data", "none"]:
        for conv in [False, True]:
            for grad in [False, True]:
                for splits in ([1] * 7, [3] + [1] * 6, [5, 1, 3, 1, 2], [4, 5, 1]):
                    m = SSDMixer(d_model, H, P, N, num_groups=G, chunk_size=4, rope=rope, use_conv=conv,
                                 backend=backend, conv_kernel=3, dt_limit=(0.01, 5.0))
                    with torch.no_grad():
                        for prm in m.parameters():
                            prm.copy_(torch.randn_like(prm) * 0.5)
                    m = m.to(dtype)
                    b, l = 2, sum(splits)
                    x = torch.randn(b, l, d_model, dtype=dtype)
                    pos = torch.arange(l).expand(b, l) + 7
                    with torch.set_grad_enabled(grad):
                        full = m(x, pos)
                        state, outs, s0 = {}, [], 0
                        for n in splits:
                            outs.append(m(x[:, s0:s0 + n], pos[:, s0:s0 + n], None, state)); s0 += n
                    e = rel(torch.cat(outs, 1), full)
                    flag = "BAD" if not e <= tol else "ok"
                    bad += flag == "BAD"
                    print(backend, rope, "conv" if conv else "-", "grad" if grad else "nograd", splits, flag, f"{e:.2e}", flush=True)
print("bad", bad)
