"""Profile where the time of small MQAR training steps and decode steps goes on a GPU (torch.profiler tables).

``python scripts/gpu_profile.py OUT_DIR``: an MQAR training step (2 layers, width 64, T = 256, batch 64) per mixer
and a decode step of llama-base and cheems-base at 4K context; one table per case (top operators by self CPU and by
self CUDA time) in OUT_DIR/profile.txt. A preset's training step is profiled by ``wm bench profile``.
"""
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from wonderful_matrices.bench import mqar as bm
from wonderful_matrices.bench.decode_common import fill_cache
from wonderful_matrices.data.mqar import mqar
from wonderful_matrices.models import CheemsCache, CheemsForCausalLM, presets

if sys.argv[1] == "scaling":  # ms per MQAR step of one process; run several at once to see if they share the GPU
    dev = torch.device("cuda")
    x, y = (t.to(dev) for t in mqar(64, 256, 16, 8192, seed=0))
    model = bm.build_model("attn", 64, 8192, 128, dev, 0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    for i in range(60):
        if i == 10:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = bm._loss(model, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    torch.cuda.synchronize()
    print(f"scaling: {(time.perf_counter() - t0) / 50 * 1e3:.2f} ms per step", flush=True)
    sys.exit(0)
out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
dev = torch.device("cuda")
report = open(out / "profile.txt", "w")


def case(name, fn, n=5):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    ms = (time.perf_counter() - t0) / n * 1e3
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
    ka = prof.key_averages()
    text = (f"\n===== {name}: {ms:.2f} ms per call (wall)\n"
            + ka.table(sort_by="self_cpu_time_total", row_limit=22, max_name_column_width=60)
            + ka.table(sort_by="self_device_time_total", row_limit=12, max_name_column_width=60))
    report.write(text)
    report.flush()
    print(f"{name}: {ms:.2f} ms", flush=True)


x, y = (t.to(dev) for t in mqar(64, 256, 16, 8192, seed=0))
for mixer, fused in (("attn", False), ("attn", True), ("dma", True), ("ssd", True)):
    model = bm.build_model(mixer, 64, 8192, 128, dev, 0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=fused)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = bm._loss(model, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    case(f"mqar train step {mixer} fused AdamW={fused}", step)

for name in ("llama-base", "cheems-base"):
    cfg = presets.get(name, use_cache=True)
    model = CheemsForCausalLM(cfg).to(dev).eval().to(torch.bfloat16)
    prompt = torch.randint(0, cfg.vocab_size, (1, 16), device=dev)
    cache = CheemsCache(cfg)
    with torch.no_grad():
        model(input_ids=prompt, past_key_values=cache, use_cache=True)
        fill_cache(cache, cfg, 4096)
        token = prompt[:, -1:]

        def decode():
            with torch.no_grad():
                model(input_ids=token, past_key_values=cache, use_cache=True, graphed_decoding=False)
        case(f"decode step {name} @4K", decode, n=5)

report.close()
