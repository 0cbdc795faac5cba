"""Host cost of eager decoding on the CPU: milliseconds per generated token and host synchronisations per step.

    PYTHONPATH=src python scripts/decode_host.py cheems-tiny llama-tiny cheems-tiny@12

``NAME@L`` takes preset NAME with L layers, the layer types of the preset of the same family at base size repeated
(``cheems-tiny@12``: cheems-base's 12 layer kinds at tiny width). At tiny width there is almost no arithmetic, so
the time per token is the Python and dispatch work a GPU step also pays on its host. A synchronisation is a read
of a tensor's value on the host (``aten::_local_scalar_dense``: ``.item()``, ``bool()``, ``int()``, ``.tolist()``);
each one stops a CUDA host from queueing work ahead of the GPU. Reports the best of ``--repeats`` timed runs on one
thread (the machine may be shared) and where each synchronisation of a decoding step comes from.
"""
from __future__ import annotations

import argparse
import collections
import time
import traceback

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from wonderful_matrices.models import presets
from wonderful_matrices.models.modeling import CheemsForCausalLM


class SyncCounter(TorchDispatchMode):
    """Counts the ATen ops run inside it and the host reads of tensor values, with the source line of each read."""

    def __init__(self):
        super().__init__()
        self.ops = 0
        self.syncs = 0
        self.where: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        if func is torch.ops.aten._local_scalar_dense.default:
            self.syncs += 1
            frames = [f for f in traceback.extract_stack()[:-1]
                      if "torch/" not in f.filename or "transformers/" in f.filename]
            lines = (f"{f.filename.rsplit('site-packages/', 1)[-1]}:{f.lineno}" for f in frames[-1:-3:-1])
            self.where[" <- ".join(lines)] += 1
        return func(*args, **(kwargs or {}))


def build(spec: str) -> CheemsForCausalLM:
    """``NAME`` or ``NAME@L`` (see the module docstring) -> a model in eval mode."""
    name, _, layers = spec.partition("@")
    config = presets.get(name)
    if layers:
        base = presets.get(name.rsplit("-", 1)[0] + "-base")
        count = int(layers)
        config.num_hidden_layers = count
        config.mixer_types = [base.mixer_types[i % len(base.mixer_types)] for i in range(count)]
        config.ffn_types = [base.ffn_types[i % len(base.ffn_types)] for i in range(count)]
    torch.manual_seed(0)
    return CheemsForCausalLM(config).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+", help="preset names, or NAME@LAYERS")
    parser.add_argument("--tokens", type=int, default=64, help="tokens generated per timed run")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs (the best is reported)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    prompt = torch.randint(0, 500, (1, 32), generator=torch.Generator().manual_seed(0))
    for spec in args.models:
        model = build(spec)
        with torch.no_grad():
            model.generate(prompt, max_new_tokens=4, do_sample=False)  # warm-up
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                model.generate(prompt, max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False)
                best = min(best, time.perf_counter() - start)
            counts = []
            for new in (1, 11):  # the difference is 10 decoding steps
                counter = SyncCounter()
                with counter:
                    model.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False)
                counts.append(counter)
        steps = counts[1].where - counts[0].where
        print(f"{spec}: {best / args.tokens * 1e3:.2f} ms/token, {(counts[1].syncs - counts[0].syncs) / 10:g} "
              f"host syncs and {(counts[1].ops - counts[0].ops) / 10:g} ATen ops per decoding step")
        for where, n in steps.most_common():
            print(f"    {n / 10:g} per step: {where}")


if __name__ == "__main__":
    main()
