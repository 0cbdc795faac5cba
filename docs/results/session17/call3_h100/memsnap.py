"""One compiled cheems-base training step (2 x 16384 tokens) under the CUDA caching allocator's history; the
snapshot's allocations alive at the peak, summarised by their Python frames."""
import collections, pickle, sys, torch
from wonderful_matrices.models import presets
from wonderful_matrices.models.modeling import CheemsForCausalLM
from wonderful_matrices.train.optim import adamw
from wonderful_matrices.bench.lm_common import compiled_lm_loss, optimizer_step
name, out = sys.argv[1], sys.argv[2]
device = torch.device("cuda")
config = presets.get(name)
model = CheemsForCausalLM(config).to(device).train()
opt = adamw(model, 1e-4, 0.1)
rows = torch.randint(0, config.vocab_size, (2, 16385), device=device)
loss_fn = compiled_lm_loss()
for _ in range(2):
    optimizer_step(model, opt, rows, device, loss_fn=loss_fn)
torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
torch.cuda.memory._record_memory_history(max_entries=200000, stacks="python")
optimizer_step(model, opt, rows, device, loss_fn=loss_fn)
torch.cuda.synchronize()
print(name, "peak GB", torch.cuda.max_memory_allocated() / 1e9)
snap = torch.cuda.memory._snapshot()
torch.cuda.memory._record_memory_history(enabled=None)
# replay the trace: alive blocks at the peak
events = snap["device_traces"][0]
alive, cur, best, best_set = {}, 0, 0, None
for e in events:
    if e["action"] == "alloc":
        alive[e["addr"]] = e; cur += e["size"]
        if cur > best: best, best_set = cur, dict(alive)
    elif e["action"] in ("free_completed",):
        if e["addr"] in alive: cur -= alive.pop(e["addr"])["size"]
print("peak over the step's own allocations GB", best / 1e9, "(plus what was alive before the step)")
agg = collections.Counter(); cnt = collections.Counter()
for e in (best_set or {}).values():
    frames = [f for f in e.get("frames", []) if "wonderful_matrices" in f["filename"] or "torch/_inductor" in f["filename"]]
    key = " <- ".join(f"{f['filename'].split('/')[-1]}:{f['line']}:{f['name']}" for f in frames[:3]) or "?"
    agg[key] += e["size"]; cnt[key] += 1
for k, v in agg.most_common(40): print(f"{v/1e9:8.3f} GB {cnt[k]:5d}  {k[:300]}")
# before-step baseline
segs = sum(s["total_size"] for s in snap["segments"])
print("reserved GB", segs / 1e9)
