"""Host cost of eager decoding on the CPU: milliseconds per generated token and host synchronisations per step.

    PYTHONPATH=src python scripts/decode_host.py cheems-tiny llama-tiny cheems-tiny@12

``NAME@L`` takes preset NAME with L layers, the layer types of the preset of the same family at base size repeated
(``cheems-tiny@12``: cheems-base's 12 layer kinds at tiny width). At tiny width there is almost no arithmetic, so
the time per token is the Python and dispatch work a GPU step also pays on its host. A synchronisation is a read
of a tensor's value on the host (``aten::_local_scalar_dense``: ``.item()``, ``bool()``, ``int()``, ``.tolist()``);
each one stops a CUDA host from queueing work ahead of the GPU. Reports the best of ``--repeats`` timed runs on one
thread (the machine may be shared) and where each synchronisation of a decoding step comes from.

``--triton`` counts the code path a GPU takes instead: every layer on its Triton backend (the fused decoding steps of
SSD, DMA and CDMoE, the fused norms: what ``"auto"`` picks on CUDA, with ``ops.cdmoe.AUTO_USES_DECODE_STEP`` set),
the kernels run by Triton's CPU interpreter (the script restarts itself with ``TRITON_INTERPRET=1``, float32). The
ATen ops counted are then those the host dispatches around the kernels (the interpreter's own work inside a launch
is not counted), and the line adds the Triton launches per step; the time per token is not measured
(interpreted kernels say nothing about a GPU host).

    PYTHONPATH=src python scripts/decode_host.py --triton cheems-tiny@12
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import time
import traceback

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from wonderful_matrices.models import presets
from wonderful_matrices.models.modeling import CheemsForCausalLM


class SyncCounter(TorchDispatchMode):
    """Counts the ATen ops run inside it and the host reads of tensor values, with the source line of each read;
    with ``count_launches`` also the Triton launches (interpreted), whose own ATen ops are not counted."""

    def __init__(self, count_launches: bool = False):
        super().__init__()
        self.ops = 0
        self.syncs = 0
        self.launches = 0
        self.in_launch = 0
        self.where: collections.Counter = collections.Counter()
        self.count_launches = count_launches

    def __enter__(self):
        if self.count_launches:
            from triton.runtime.interpreter import InterpretedFunction

            self._run = InterpretedFunction.run
            counter = self

            def run(kernel, *args, **kwargs):
                counter.launches += 1
                counter.in_launch += 1
                try:
                    return counter._run(kernel, *args, **kwargs)
                finally:
                    counter.in_launch -= 1

            InterpretedFunction.run = run
        return super().__enter__()

    def __exit__(self, *exc):
        if self.count_launches:
            from triton.runtime.interpreter import InterpretedFunction

            InterpretedFunction.run = self._run
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.in_launch:
            return func(*args, **(kwargs or {}))
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


def use_triton_backends(model: CheemsForCausalLM) -> None:
    """Every layer of ``model`` on its Triton backend: the kernels a CUDA device runs under ``"auto"``."""
    from wonderful_matrices.layers import CDMoE, DynamicMaskAttention, RMSNorm, SSDMixer
    from wonderful_matrices.layers.ssd import GatedRMSNorm

    for module in model.modules():
        if isinstance(module, (RMSNorm, GatedRMSNorm, SSDMixer, CDMoE)):  # SSDMixer: Mamba2Mixer too
            module.backend = "triton"
        elif isinstance(module, DynamicMaskAttention):
            module.decoder.backend = "triton"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+", help="preset names, or NAME@LAYERS")
    parser.add_argument("--tokens", type=int, default=64, help="tokens generated per timed run")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs (the best is reported)")
    parser.add_argument("--triton", action="store_true",
                        help="count the GPU's code path: Triton backends, kernels interpreted on the CPU (no timing)")
    args = parser.parse_args()
    if args.triton and os.environ.get("TRITON_INTERPRET") != "1":  # must be set before triton is imported
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "TRITON_INTERPRET": "1"})
    torch.set_num_threads(1)
    prompt = torch.randint(0, 500, (1, 32), generator=torch.Generator().manual_seed(0))
    steps = 2 if args.triton else 10  # interpreted kernels are slow: fewer counted steps
    for spec in args.models:
        model = build(spec)
        if args.triton:
            use_triton_backends(model)
        with torch.no_grad():
            model.generate(prompt, max_new_tokens=4, do_sample=False)  # warm-up
            best = float("inf")
            for _ in range(0 if args.triton else args.repeats):
                start = time.perf_counter()
                model.generate(prompt, max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False)
                best = min(best, time.perf_counter() - start)
            counts = []
            for new in (1, 1 + steps):  # the difference is `steps` decoding steps
                counter = SyncCounter(count_launches=args.triton)
                with counter:
                    model.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False)
                counts.append(counter)
        where = counts[1].where - counts[0].where
        timing = "- ms/token (interpreted)" if args.triton else f"{best / args.tokens * 1e3:.2f} ms/token"
        launches = (f", {(counts[1].launches - counts[0].launches) / steps:g} Triton launches" if args.triton
                    else "")
        print(f"{spec}: {timing}, {(counts[1].syncs - counts[0].syncs) / steps:g} host syncs and "
              f"{(counts[1].ops - counts[0].ops) / steps:g} ATen ops per decoding step{launches}")
        for line, n in where.most_common():
            print(f"    {n / steps:g} per step: {line}")


if __name__ == "__main__":
    main()
