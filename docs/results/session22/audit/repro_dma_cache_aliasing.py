"""DMA decoding writes into memory the caller owns (and crashes when that memory is larger).

DecodeStep (ops/dma/cache.py) takes the cache tensors as prefix views of larger buffers: _capacity_view()
treats ANY tensor whose storage extends past its end as its own growable buffer. After a first call of
l <= keep_window tokens, DynamicMaskAttention stores its tensors without copying; with num_key_value_heads == 1,
state["position"] is `position_ids[..., None].expand(b, l, 1).contiguous()` == a VIEW of the caller's
position_ids. The next decoding step widens that "buffer" in place (_widen fills slots [n, w) with -1) and
scatters the new position into it: it overwrites the caller's tensor beyond the slice it passed.
"""
import torch
from wonderful_matrices import presets, CheemsForCausalLM

torch.manual_seed(0)
cfg = presets.get("doge-tiny", num_key_value_heads=1, initializer_range=0.1)  # keep_window = 8
model = CheemsForCausalLM(cfg).double().eval()
ids = torch.randint(0, cfg.vocab_size, (1, 20))
with torch.no_grad():
    ref = model(input_ids=ids, use_cache=False).logits

def decode(pos_source):
    """prefill 5 tokens, then one token per call; position_ids are slices of pos_source"""
    logits = []
    with torch.no_grad():
        out = model(input_ids=ids[:, :5], position_ids=pos_source(0, 5), use_cache=True)
        cache = out.past_key_values; logits.append(out.logits)
        for t in range(5, 20):
            out = model(input_ids=ids[:, t:t + 1], position_ids=pos_source(t, t + 1), past_key_values=cache,
                        use_cache=True)
            cache = out.past_key_values; logits.append(out.logits)
    return (torch.cat(logits, 1) - ref).abs().max().item()

# (a) fresh position tensors each call: agrees
print("(a) fresh position_ids each call: max|decode - full| =", decode(lambda s, e: torch.arange(s, e)[None]))

# (b) prompt positions sliced from a (1, 9) tensor (exactly w + 1 slots), later steps without position_ids:
#     the caller's tensor is silently overwritten by the cache
pos9 = torch.arange(9)[None]
err = decode(lambda s, e: pos9[:, s:e] if s == 0 else None)
print("(b) prompt position_ids = pos9[:, :5]: max|decode - full| =", err, "; caller's pos9 is now", pos9.tolist(),
      "(was [[0, 1, ..., 8]])")

# (c) the usual pattern: positions of the whole sequence computed once, prompt slice passed, steps without
#     position_ids -> the first decoding step crashes (and has already overwritten the caller's tensor)
pos20 = torch.arange(20)[None]
try:
    decode(lambda s, e: pos20[:, s:e] if s == 0 else None)
except RuntimeError as exc:
    print("(c) prompt position_ids = pos20[:, :5]: RuntimeError:", exc)
print("    caller's pos20 is now", pos20.tolist())

# (d) same as (c) with batch 2 (rows of the (2, 20) tensor): crash as well?
pos2 = torch.arange(20)[None].repeat(2, 1)
ids2 = ids.repeat(2, 1)
try:
    with torch.no_grad():
        out = model(input_ids=ids2[:, :5], position_ids=pos2[:, :5], use_cache=True)
        out = model(input_ids=ids2[:, 5:6], past_key_values=out.past_key_values, use_cache=True)
    print("(d) batch 2: no error; caller's pos2 now", pos2.tolist())
except RuntimeError as exc:
    print("(d) batch 2, prompt position_ids = pos2[:, :5]: RuntimeError:", exc)
    print("    caller's pos2 is now", pos2.tolist())
