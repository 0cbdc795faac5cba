"""analytic_cache_bytes for SSD with its short conv, DMA without a window, per-component comparison."""
import torch
torch.set_num_threads(1)
from wonderful_matrices.models import presets, CheemsForCausalLM, CheemsCache
from wonderful_matrices.bench.decode_common import analytic_cache_bytes
for name, over in [("cheems-tiny", dict(ssd_use_conv=True)), ("doge-tiny", dict(keep_window=None)),
                   ("cheems-tiny", dict(keep_window=None, ssd_use_conv=True))]:
    cfg = presets.get(name, use_cache=True, **over)
    model = CheemsForCausalLM(cfg).eval().to(torch.bfloat16)
    for C in (6, 20):
        cache = CheemsCache(cfg)
        with torch.no_grad():
            model(input_ids=torch.randint(4, 512, (2, C)), past_key_values=cache, use_cache=True)
        kv_ssm = sum(v.numel() * v.element_size() for s in cache.states for k, v in s.items()
                     if k in ("key", "value", "ssm_state", "conv_state"))
        other = {k: v.numel() * v.element_size() for s in cache.states for k, v in s.items()
                 if isinstance(v, torch.Tensor) and k not in ("key", "value", "ssm_state", "conv_state")}
        shapes = {k: tuple(v.shape) for k, v in cache.states[0].items() if isinstance(v, torch.Tensor)}
        print(f"{name} {over} batch 2 C={C}: analytic {analytic_cache_bytes(cfg, C, 2, batch=2)}, "
              f"measured key/value/ssm/conv {kv_ssm}, other tensors {other}; layer0 {shapes}")
