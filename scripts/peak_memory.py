"""Where a training step's peak CUDA memory goes: the blocks alive at the step's peak, grouped by source line.

    PYTHONPATH=src python scripts/peak_memory.py --presets cheems-base llama-base --seq-len 16384 [--eager]

Per preset: a fresh model and the step of ``wm bench lm`` (bf16 autocast, backward, AdamW; compiled unless
``--eager``), two warm-up steps, then one step under the caching allocator's history
(``torch.cuda.memory._record_memory_history``). The history's allocations and frees are replayed to find the moment
the step's own allocations peak; the blocks alive then are summed by the first ``--depth`` frames in this package
(``file:line:function``, innermost first; compiled code is attributed to the source lines it was generated from).
Printed: the measured peak (``max_memory_allocated``, which includes the parameters and optimizer state alive before
the step), the replayed peak of the step's own allocations, and the ``--top`` groups. Session 17 found this way that
the compiled loss kept every chunk's float32 logits (docs/results.md).
"""
from __future__ import annotations

import argparse
import collections


def alive_at_peak(events: list[dict]) -> tuple[int, dict]:
    """Replay a device trace of the allocator's history (``snapshot["device_traces"][i]``: dicts with ``action``,
    ``addr``, ``size``, ``frames``) -> (the largest sum of live block sizes, the blocks alive then by address). A
    block counts from its ``alloc`` to its ``free_completed``; blocks allocated before the history began are not
    seen."""
    alive, current, best, best_alive = {}, 0, 0, {}
    for event in events:
        if event["action"] == "alloc":
            alive[event["addr"]] = event
            current += event["size"]
            if current > best:
                best, best_alive = current, dict(alive)
        elif event["action"] == "free_completed" and event["addr"] in alive:
            current -= alive.pop(event["addr"])["size"]
    return best, best_alive


def by_source(blocks: dict, package: str = "wonderful_matrices", depth: int = 3) -> list[tuple[int, int, str]]:
    """Blocks (as :func:`alive_at_peak` returns them) grouped by their first ``depth`` frames inside ``package``
    -> ``[(bytes, blocks, "file:line:function <- ...")]``, largest first (``"?"``: no frame in the package)."""
    size, count = collections.Counter(), collections.Counter()
    for block in blocks.values():
        frames = [f for f in block.get("frames", []) if package in f["filename"]][:depth]
        key = " <- ".join(f"{f['filename'].rsplit('/', 1)[-1]}:{f['line']}:{f['name']}" for f in frames) or "?"
        size[key] += block["size"]
        count[key] += 1
    return [(b, count[key], key) for key, b in size.most_common()]


def main() -> None:
    import torch

    from wonderful_matrices.bench.lm_common import compiled_lm_loss, optimizer_step
    from wonderful_matrices.models import presets
    from wonderful_matrices.models.modeling import CheemsForCausalLM
    from wonderful_matrices.train.optim import adamw

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["cheems-base", "llama-base"])
    parser.add_argument("--seq-len", type=int, default=16384)
    parser.add_argument("--tokens", type=int, default=32768, help="tokens per step (rows = tokens // seq-len)")
    parser.add_argument("--eager", action="store_true", help="the eager step instead of the compiled one")
    parser.add_argument("--depth", type=int, default=3, help="frames per group")
    parser.add_argument("--top", type=int, default=30, help="groups printed per preset")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("peak_memory.py needs a CUDA device")
    device = torch.device("cuda")
    for name in args.presets:
        config = presets.get(name)
        model = CheemsForCausalLM(config).to(device).train()
        opt = adamw(model, 1e-4, 0.1)
        rows = torch.randint(0, config.vocab_size, (max(1, args.tokens // args.seq_len), args.seq_len + 1),
                             device=device)
        loss_fn = None if args.eager else compiled_lm_loss()
        for _ in range(2):
            optimizer_step(model, opt, rows, device, loss_fn=loss_fn)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.memory._record_memory_history(max_entries=200000, stacks="python")
        optimizer_step(model, opt, rows, device, loss_fn=loss_fn)
        torch.cuda.synchronize()
        snapshot = torch.cuda.memory._snapshot()
        torch.cuda.memory._record_memory_history(enabled=None)
        peak, blocks = alive_at_peak(snapshot["device_traces"][device.index or 0])
        print(f"== {name} ({'eager' if args.eager else 'compiled'}, {rows.shape[0]} x {args.seq_len}): measured "
              f"peak {torch.cuda.max_memory_allocated() / 1e9:.2f} GB; the step's own allocations at their peak "
              f"{peak / 1e9:.2f} GB")
        for size, count, key in by_source(blocks, depth=args.depth)[:args.top]:
            print(f"{size / 1e9:8.3f} GB {count:5d}  {key}")
        del model, opt, rows
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
