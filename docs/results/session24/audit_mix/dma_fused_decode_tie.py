"""DMA layer decoding on the fused Triton step (decode_backend="triton"; run with TRITON_INTERPRET=1): the step
kernel computes the key bias with its own softplus (max(v,0)+log1p(exp(-|v|))) while the prefill uses torch's
F.softplus; equal dt_proj outputs then give biases that differ by an ulp between a prefilled key and a decoded key.
With a window the exact tie rule (later key wins) is broken: the cache keeps the old prefilled keys forever and
the decoded outputs differ from the definition (sliding-window attention for a constant bias) and from the torch
decode step."""
import os, sys, torch
assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ref import rel, dma_ref
from wonderful_matrices.layers import DynamicMaskAttention

torch.manual_seed(0)
w, b, l, prefill = 2, 1, 14, 4
for form, dtb in [("gate", (0.3, -0.2)), ("gate", (-2.304720401763916, 0.05)), ("doge", (1.3840183019638062, 0.05))]:
  print(f"mask_form={form}, dt_proj.bias={dtb}")
  base = DynamicMaskAttention(16, 4, 2, 6, keep_window=w, mask_form=form)
  with torch.no_grad():
    for p in base.parameters():
        p.copy_(torch.randn_like(p) * 0.5)
    base.dt_proj.weight.zero_()                    # every key's dt_proj output = dt_proj.bias: biases tie exactly
    base.dt_proj.bias.copy_(torch.tensor(dtb))
  x = torch.randn(b, l, 16)
  pos = torch.arange(l)[None]
  with torch.no_grad():
    q, k, v, bias = base._project(x, pos, None)
    want = base.o_proj(dma_ref(q, k, v, bias[:, :1].expand_as(bias), w=w).float().reshape(b, l, -1))
    for backend in ("torch", "triton"):
        layer = DynamicMaskAttention(16, 4, 2, 6, keep_window=w, decode_backend=backend, mask_form=form)
        layer.load_state_dict(base.state_dict())
        state = {}
        outs = [layer(x[:, :prefill], pos[:, :prefill], None, state)]
        for i in range(prefill, l):
            outs.append(layer(x[:, i:i + 1], pos[:, i:i + 1], None, state))
        dec = torch.cat(outs, 1)
        held = sorted(state["position"][0, :, 0].tolist())
        print(f"  decode_backend={backend:6s}: rel err of decoded tokens vs definition {rel(dec[:, prefill:], want[:, prefill:]):.3e}; "
              f"head-0 cache holds positions {held} (definition: {list(range(l - w, l))}); "
              f"cached head-0 biases {state['bias'][0, :, 0].tolist()}")
