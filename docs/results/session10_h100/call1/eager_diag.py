"""Why eager decoding of cheems-base halves after the first context: eager ms per step in a fixed sequence of
situations (new caches at 4K / 128K, after the profiler, after a CUDA graph), host enqueue time, and cProfile."""
import cProfile, gc, io, pstats, sys, time
import torch
from wonderful_matrices.models import CheemsCache, GraphedDecoder, presets
from wonderful_matrices.models.modeling import CheemsForCausalLM
from wonderful_matrices.bench.decode_common import fill_cache, step_launches
from wonderful_matrices.bench.common import time_callable, trusted_values

dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
name = sys.argv[1] if len(sys.argv) > 1 else "cheems-base"
cfg = presets.get(name, use_cache=True)
torch.manual_seed(0)
model = CheemsForCausalLM(cfg).to(dev, torch.bfloat16).eval()


def make(context):
    cache = CheemsCache(cfg)
    prompt = torch.randint(0, cfg.vocab_size, (1, 16), device=dev)
    with torch.no_grad():
        model(input_ids=prompt, past_key_values=cache, use_cache=True)
        fill_cache(cache, cfg, context)
    token = prompt[:, -1:]

    @torch.no_grad()
    def step():
        model(input_ids=token, past_key_values=cache, use_cache=True, graphed_decoding=False)
    return cache, token, step


def report(label, step):
    ms = time_callable(step, dev, warmup=3, reps=30)
    (torch.cuda.synchronize() if dev.type == "cuda" else None)
    with trusted_values():
        t0 = time.perf_counter()
        for _ in range(30):
            step()
        t1 = time.perf_counter()
        (torch.cuda.synchronize() if dev.type == "cuda" else None)
        t2 = time.perf_counter()
    print(f"{label:42s} eager {ms:7.3f} ms/step ({1e3 / ms:6.1f} tok/s); 30 steps: host enqueue "
          f"{(t1 - t0) / 30 * 1e3:.3f} ms/step, wall {(t2 - t0) / 30 * 1e3:.3f} ms/step", flush=True)


def cprofile(label, step, n=30):
    pr = cProfile.Profile()
    with trusted_values():
        pr.enable()
        for _ in range(n):
            step()
        pr.disable()
    (torch.cuda.synchronize() if dev.type == "cuda" else None)
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(28)
    print(f"--- cProfile {label} ({n} steps)\n" + "\n".join(s.getvalue().splitlines()[:60]), flush=True)


c1, t1, s1 = make(4096)
report("A 4K first", s1)
report("A' 4K again", s1)
c2, t2, s2 = make(131072)
report("B 128K new cache", s2)
c3, t3, s3 = make(4096)
report("C 4K new cache", s3)
cprofile("C 4K", s3)
launches, unit = step_launches(s3, dev)
print("launches", launches, unit)
report("D 4K after torch.profiler", s3)
c4, t4, s4 = make(4096)
report("D' 4K new cache after profiler", s4)
dec = GraphedDecoder(model, c4)
for _ in range(4):
    dec.step(t4)
g_ms = time_callable(lambda: dec.step(t4), dev, warmup=3, reps=30)
print(f"graphed {g_ms:.3f} ms ({1e3 / g_ms:.1f} tok/s), recorded {dec.recorded}", flush=True)
c5, t5, s5 = make(4096)
report("E 4K new cache after a graph", s5)
del dec
gc.collect()
report("F 4K after the graph is freed", s5)
cprofile("F 4K", s5)
