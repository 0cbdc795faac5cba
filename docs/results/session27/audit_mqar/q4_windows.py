"""Audit Q4: the bounded-window mixers against references written here from docs/design.md.

4a. ``dynamic_mask_attention(keep_window=w)`` (every backend on the CPU: naive, torch, and triton under
    TRITON_INTERPRET=1, the kernels the GPU runs) against a reference that, per query, sorts the visible keys by
    (bias, position) descending, keeps the first w and takes a softmax over them — random, tied and all-zero biases.
4b. The ``swa-w{w}`` layer against sliding-window attention written out (own projections, own rotate-half RoPE,
    a masked softmax over the last w keys); the ``dma-w{w}`` layer against the same with its own bias formula and
    top-w selection; a dma-w layer whose bias is constant must equal swa.
4c. The models of every mixer kind: layers, heads, widths, windows, mask parameters, SSD shapes (printed).
4d. The decoding state: the cache tensors the model really holds after T tokens (+ 3 decoded) against
    ``state_bytes`` / 2 elements and ``matching_state_size``.

Run: ``OMP_NUM_THREADS=1 TRITON_INTERPRET=1 PYTHONPATH=src python docs/results/session27/audit_mqar/q4_windows.py``.
"""
import math
import os
import time

import torch
import torch.nn.functional as F

torch.set_num_threads(1)

from wonderful_matrices.bench import mqar as bench  # noqa: E402
from wonderful_matrices.ops import dynamic_mask_attention  # noqa: E402


def ref_selection(bias_row, i, w):
    """Keys query i keeps: visible keys j <= i, sorted by (bias, j) descending (ties to the later key), first w."""
    keys = sorted(range(i + 1), key=lambda j: (float(bias_row[j]), j), reverse=True)
    return keys if w is None else keys[:w]


def ref_attention(q, k, v, bias, w):
    """(b, l, h, d) float64 reference, one KV head per query head (hq == hkv), lq == lk."""
    b, l, h, d = q.shape
    out = torch.zeros(b, l, h, d, dtype=torch.float64)
    for bi in range(b):
        for hi in range(h):
            for i in range(l):
                keep = ref_selection(bias[bi, :, hi], i, w)
                logits = torch.stack([q[bi, i, hi].double() @ k[bi, j, hi].double() / math.sqrt(d)
                                      + float(bias[bi, j, hi]) for j in keep])
                p = torch.softmax(logits, 0)
                out[bi, i, hi] = sum(p[n] * v[bi, j, hi].double() for n, j in enumerate(keep))
    return out


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def part_a():
    print("== 4a. dynamic_mask_attention with keep_window vs the reference selection (rel. error ||a-b||/||b||)")
    g = torch.Generator().manual_seed(0)
    backends = ["naive", "torch"] + (["triton"] if os.environ.get("TRITON_INTERPRET") == "1" else [])
    worst = {}
    for l, w in ((37, 1), (37, 5), (64, 16), (70, 8), (48, 64)):
        q, k, v = (torch.randn(2, l, 2, 16, generator=g) for _ in range(3))
        biases = {"random": torch.randn(2, l, 2, generator=g),
                  "ties": torch.randint(-2, 1, (2, l, 2), generator=g).float(),  # values in {-2, -1, 0}
                  "zero": torch.zeros(2, l, 2)}
        for name, bias in biases.items():
            ref = ref_attention(q, k, v, bias, w)
            errs = {}
            for be in backends:
                out = dynamic_mask_attention(q, k, v, bias, keep_window=w, backend=be)
                errs[be] = rel(out, ref)
                worst[be] = max(worst.get(be, 0.0), errs[be])
            print(f"l={l} w={w} bias={name}: " + ", ".join(f"{be} {e:.1e}" for be, e in errs.items()))
    # lengths spanning several query blocks/tiles of the kernels (blocks of w queries; tiles of 32-128), one head
    for l, w in ((300, 64), (257, 16), (200, 128)):
        q, k, v = (torch.randn(1, l, 1, 16, generator=g) for _ in range(3))
        biases = {"random": torch.randn(1, l, 1, generator=g),
                  "ties": torch.randint(-2, 1, (1, l, 1), generator=g).float(),
                  "zero": torch.zeros(1, l, 1)}
        for name, bias in biases.items():
            ref = ref_attention(q, k, v, bias, w)
            errs = {be: rel(dynamic_mask_attention(q, k, v, bias, keep_window=w, backend=be), ref)
                    for be in backends if be != "naive"}
            for be, e in errs.items():
                worst[be] = max(worst.get(be, 0.0), e)
            print(f"l={l} w={w} bias={name}: " + ", ".join(f"{be} {e:.1e}" for be, e in errs.items()))
    # a check that the reference itself distinguishes the tie rule: ties to the EARLIER key give another output
    l, w = 37, 5
    q, k, v = (torch.randn(1, l, 1, 16, generator=g) for _ in range(3))
    bias = torch.randint(-2, 1, (1, l, 1), generator=g).float()
    out = dynamic_mask_attention(q, k, v, bias, keep_window=w, backend="torch")
    earlier = torch.zeros(1, l, 1, 16, dtype=torch.float64)
    for i in range(l):
        keep = sorted(range(i + 1), key=lambda j: (float(bias[0, j, 0]), -j), reverse=True)[:w]
        p = torch.softmax(torch.stack([q[0, i, 0].double() @ k[0, j, 0].double() / 4 + float(bias[0, j, 0])
                                       for j in keep]), 0)
        earlier[0, i, 0] = sum(p[n] * v[0, j, 0].double() for n, j in enumerate(keep))
    print(f"sensitivity: op vs a reference with ties to the EARLIER key: rel. error {rel(out, earlier):.2f} "
          "(large: the comparison above would see a wrong tie rule)")
    print("worst per backend:", {k: f"{e:.1e}" for k, e in worst.items()})


def rope(x, pos, theta=10000.0):
    """Rotate-half RoPE written from docs/design.md: x (b, l, h, d), angles pos * theta^(-2i/d)."""
    d = x.shape[-1]
    freq = theta ** (-torch.arange(0, d // 2, dtype=torch.float64) * 2 / d)
    ang = pos.double()[..., None] * freq                        # (b, l, d/2)
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1)[:, :, None], torch.cat([ang.sin(), ang.sin()], -1)[:, :, None]
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def ref_layer(layer, h, w, bias=None):
    """The layer's output written out: projections, RoPE on q and k, per-query top-w keys by (bias, position),
    softmax(q.k/sqrt(d) + bias) over them, o_proj. ``bias`` None: the layer's gate formula
    -exp(A_log) softplus(dt_proj(v)); the zero bias for swa."""
    b, l, _ = h.shape
    d = layer.head_dim
    pos = torch.arange(l)[None].expand(b, l)
    hd = h.double()
    q = (hd @ layer.q_proj.weight.double().T).view(b, l, 1, d)
    k = (hd @ layer.k_proj.weight.double().T).view(b, l, 1, d)
    vf = hd @ layer.v_proj.weight.double().T
    v = vf.view(b, l, 1, d)
    q, k = rope(q, pos), rope(k, pos)
    if bias is None:
        if layer.mask_form == "none":
            bias = torch.zeros(b, l, 1, dtype=torch.float64)
        else:
            dt = F.softplus(vf @ layer.dt_proj.weight.double().T + layer.dt_proj.bias.double())
            bias = -torch.exp(layer.A_log.double()) * dt
    o = ref_attention(q, k, v, bias, w)
    return o.reshape(b, l, d) @ layer.o_proj.weight.double().T


def ref_swa_mask(layer, h, w):
    """Sliding-window attention as a masked softmax: query i attends keys i-w < j <= i (no selection code)."""
    b, l, _ = h.shape
    d = layer.head_dim
    pos = torch.arange(l)[None].expand(b, l)
    hd = h.double()
    q = rope((hd @ layer.q_proj.weight.double().T).view(b, l, d)[:, :, None], pos)[:, :, 0]
    k = rope((hd @ layer.k_proj.weight.double().T).view(b, l, d)[:, :, None], pos)[:, :, 0]
    v = hd @ layer.v_proj.weight.double().T
    s = q @ k.transpose(1, 2) / math.sqrt(d)
    i, j = torch.arange(l)[:, None], torch.arange(l)[None]
    s = s.masked_fill(~((j <= i) & (j > i - w)), float("-inf"))
    return (torch.softmax(s, -1) @ v) @ layer.o_proj.weight.double().T


def part_b():
    print("== 4b. the layers of swa-w / dma-w models against written-out attention")
    g = torch.Generator().manual_seed(1)
    for w, l, width in ((8, 40, 32), (16, 50, 64), (3, 21, 32)):
        for mixer in (f"swa-w{w}", f"dma-w{w}"):
            torch.manual_seed(2)
            model = bench.build_model(mixer, width, 64, 16, torch.device("cpu"), seed=3)
            layer = model.model.layers[0].mixer
            with torch.no_grad():
                if mixer.startswith("dma"):  # a sharper random bias than the init's, so selection matters
                    layer.dt_proj.weight.normal_(0, 1.0, generator=g)
                    layer.A_log.fill_(1.0)
                h = torch.randn(2, l, width, generator=g)
                pos = torch.arange(l)[None].expand(2, l)
                out = layer(h, pos)
                ref = ref_layer(layer, h, w)
                line = f"{mixer} width={width} l={l}: layer vs reference {rel(out, ref):.1e}"
                if mixer.startswith("swa"):
                    line += f"; vs masked-softmax SWA {rel(out, ref_swa_mask(layer, h, w)):.1e}"
                    line += f"; mask params: {[n for n, _ in layer.named_parameters() if 'dt' in n or 'A' in n]}"
                else:
                    bias_l = layer.key_bias(h @ layer.v_proj.weight.T)
                    differs = rel(out, ref_swa_mask(layer, h, w))
                    line += f"; differs from SWA by {differs:.2f} (bias spread {float(bias_l.std()):.2f})"
                    layer.dt_proj.weight.zero_()
                    layer.dt_proj.bias.fill_(0.3)  # every key the same bias: all ties -> the last w keys
                    line += f"; constant bias vs masked-softmax SWA {rel(layer(h, pos), ref_swa_mask(layer, h, w)):.1e}"
                print(line)


def part_c():
    print("== 4c. model structure per mixer (width 128, vocab 8192, default state 128)")
    for mixer in ("attn", "dma", "ssd", "dma-w64", "swa-w64", "ssd-s64", "hyb7-w64", "hyb3-w64", "hyb1-w64"):
        model = bench.build_model(mixer, 128, 8192, 128, torch.device("cpu"), seed=0, tie_embeddings=True)
        desc = []
        for blk in model.model.layers:
            m = blk.mixer
            if hasattr(m, "keep_window"):
                desc.append(f"{type(m).__name__}(heads {m.num_heads}/{m.num_kv_heads}, head_dim {m.head_dim}, "
                            f"window {m.keep_window}, mask {m.mask_form})")
            elif hasattr(m, "num_kv_heads"):
                desc.append(f"{type(m).__name__}(heads {m.num_heads}/{m.num_kv_heads}, head_dim {m.head_dim})")
            else:
                conv = getattr(m, "conv1d", None)
                desc.append(f"{type(m).__name__}(heads {m.num_heads}, head_dim {m.head_dim}, state {m.state_size}, "
                            f"conv {None if conv is None else conv.kernel_size[0]}, rope {m.rope}, "
                            f"chunk {m.chunk_size})")
            ffn = [n for n, _ in blk.named_children() if n not in ("mixer", "mixer_norm")]
        uniq = sorted(set(desc), key=desc.index)
        tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
        print(f"{mixer}: {len(desc)} layers [{', '.join(f'{desc.count(u)}x {u}' for u in uniq)}]; other block "
              f"children {ffn}; tied {tied}; params {sum(p.numel() for p in model.parameters())}")


def cache_elements(state):
    return {k: (tuple(v.shape), v.dtype, v.numel()) for k, v in state.items() if torch.is_tensor(v)}


def part_d():
    print("== 4d. decoding state held by the model vs state_bytes (2 bytes per element) and matching_state_size")
    for width in (32, 64, 128, 256):
        print(f"width {width}: matching_state_size(w) for w in 16, 64, 128, 256 -> "
              f"{[bench.matching_state_size(w, width) for w in (16, 64, 128, 256)]}")
    for T, width in ((300, 128), (1024, 128), (40, 128)):
        for mixer in ("attn", "dma", "dma-w64", "swa-w64", "ssd-s64", "hyb3-w64"):
            model = bench.build_model(mixer, width, 256, 128, torch.device("cpu"), seed=0)
            model.eval()
            x = torch.randint(0, 256, (1, T))
            with torch.no_grad():
                out = model(input_ids=x, use_cache=True)
                cache = out.past_key_values
                nxt = out.logits[:, -1:].argmax(-1)
                for _ in range(3):
                    out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
                    nxt = out.logits[:, -1:].argmax(-1)
            claimed = bench.state_bytes(mixer, T + 3, width, 128) // 2
            per_layer = []
            for i, kind in enumerate(cache.mixer_types):
                els = cache_elements(cache.layer_state(i))
                if kind in ("dma", "attn"):
                    kv = els["key"][2] + els["value"][2]
                    st = cache.layer_state(i)
                    if "position" in st:  # slots holding a key (an empty slot has position -1)
                        els["filled_slots"] = ((), f"{int((st['position'] >= 0).sum())} of {st['position'].shape[1]}",
                                               0)
                    key = st["key"]
                    els["allocated_slots"] = ((), key.untyped_storage().nbytes() // (key.element_size() * key.shape[2]
                                                                                     * key.shape[3]), 0)
                    extra = {n: (s, str(dt).replace("torch.", "")) for n, (s, dt, _) in els.items()
                             if n not in ("key", "value")}
                    per_layer.append((kind, kv, f"key/value {els['key'][0]} {els['key'][1]}; also {extra}"))
                else:
                    per_layer.append((kind, els["ssm_state"][2],
                                      f"ssm_state {els['ssm_state'][0]} {els['ssm_state'][1]}; conv_state "
                                      f"{els.get('conv_state', (None, None, 0))[:2]} "
                                      f"({els.get('conv_state', (0, 0, 0))[2]} elements, not counted)"))
            mean = sum(p[1] for p in per_layer) // len(per_layer)
            kinds = {p[0]: p[2] for p in per_layer}
            print(f"T={T}+3 {mixer}: counted elements per layer {[p[1] for p in per_layer]} (mean {mean}) vs "
                  f"state_bytes/2 at T+3 {claimed} -> {'equal' if mean == claimed else 'DIFFERENT'}; "
                  + " | ".join(f"{k}: {v}" for k, v in kinds.items()))


def part_e():
    print("== 4e. dtypes of the decoding state of a bfloat16 model (what 'bytes' means for each kind)")
    for mixer in ("dma-w64", "ssd-s64"):
        model = bench.build_model(mixer, 128, 256, 128, torch.device("cpu"), seed=0).to(torch.bfloat16)
        model.eval()
        with torch.no_grad():
            cache = model(input_ids=torch.randint(0, 256, (1, 100)), use_cache=True).past_key_values
        st = cache.layer_state(0)
        desc = {n: (tuple(t.shape), str(t.dtype).replace("torch.", ""), t.numel() * t.element_size())
                for n, t in st.items() if torch.is_tensor(t)}
        print(f"{mixer}: {desc}; total bytes {sum(d[2] for d in desc.values())} vs state_bytes "
              f"{bench.state_bytes(mixer, 100, 128)}")


def main():
    t0 = time.time()
    part_a()
    part_b()
    part_c()
    part_d()
    part_e()
    print(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
