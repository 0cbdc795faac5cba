"""Where the work of one decoding step goes: the non-view ATen ops (and, with ``--triton``, the Triton launches) of
one batch-1 decoding step of a preset, per part of the model, on the CPU.

    PYTHONPATH=src python scripts/decode_ops.py cheems-base            # the CPU (torch) paths
    TRITON_INTERPRET=1 PYTHONPATH=src python scripts/decode_ops.py cheems-tiny --triton
                                                                       # the paths CUDA takes, in the interpreter

Parts: ``outside`` (embedding, positions, final norm, LM head), and per block kind (``ssd+cdmoe``,
``dma+cdmoe``, …) ``mixer_norm``, ``mixer``, ``ffn_norm``, ``ffn`` and ``residual`` (the block's own adds), each
the mean over the blocks of that kind; beside the ops, the kernels they launch on a GPU (the ops of
:data:`NO_KERNEL` launch none). With ``--triton`` every backend switch is set to ``"triton"`` and a
Triton launch counts as one kernel (the ops the interpreter itself dispatches are not counted): the sum estimates
the CUDA kernels of the step (one per non-view ATen op is an estimate; a matmul may take two).
"""
from __future__ import annotations

import argparse
import collections

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from wonderful_matrices.models import CheemsForCausalLM, presets

# ATen ops that launch no CUDA kernel: allocations, metadata, and ``full``, which is how kernel outputs are
# poisoned under the interpreter (``empty`` on a GPU)
NO_KERNEL = {"empty", "empty_like", "empty_strided", "new_empty", "promote_types", "_unsafe_view", "full"}


class _Counter(TorchDispatchMode):
    """Counts non-view ATen ops by the part of the model running (``part``), and Triton launches."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()
        self.names = collections.defaultdict(collections.Counter)
        self.kernels = collections.Counter()
        self.part = "outside"
        self.active = False
        self.paused = 0

    def __enter__(self):
        self.active = True
        return super().__enter__()

    def __exit__(self, *exc):
        self.active = False
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.paused and not func.is_view:
            name = func.overloadpacket.__name__
            self.ops[self.part] += 1
            self.names[self.part][name] += 1
            self.kernels[self.part] += name not in NO_KERNEL
        return func(*args, **(kwargs or {}))


def _patch_triton_launches(counter: _Counter) -> None:
    """Count each interpreted Triton launch as one kernel of the current part and hide the interpreter's own
    tensor copies from the op count."""
    from triton.runtime import interpreter

    call = interpreter.GridExecutor.__call__

    def counted(self, *args, **kwargs):
        if not counter.active:
            return call(self, *args, **kwargs)
        counter.ops[counter.part] += 1
        counter.kernels[counter.part] += 1
        counter.names[counter.part]["triton:" + self.fn.__name__] += 1
        counter.paused += 1
        try:
            return call(self, *args, **kwargs)
        finally:
            counter.paused -= 1

    interpreter.GridExecutor.__call__ = counted


def _tag(counter: _Counter, module: torch.nn.Module, part: str) -> None:
    def enter(_module, _args, _kwargs=None):
        enter.previous.append(counter.part)
        counter.part = part

    def leave(_module, _args, _output):
        counter.part = enter.previous.pop()

    enter.previous = []
    module.register_forward_pre_hook(enter)
    module.register_forward_hook(leave)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("preset")
    parser.add_argument("--triton", action="store_true", help="force the Triton backends (TRITON_INTERPRET=1)")
    parser.add_argument("--prefill", type=int, default=64)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--top", type=int, default=0, help="list the N most frequent ops of each part")
    args = parser.parse_args()
    overrides = dict(ssd_backend="triton", dma_decode_backend="triton", cdmoe_backend="triton") if args.triton else {}
    config = presets.get(args.preset, **overrides)
    torch.manual_seed(0)
    model = CheemsForCausalLM(config).eval().to(getattr(torch, args.dtype))
    if args.triton:
        for module in model.modules():
            if hasattr(module, "backend") and getattr(module, "backend") == "auto":
                module.backend = "triton"
    counter = _Counter()
    kinds = collections.Counter()
    for block, mixer, ffn in zip(model.model.layers, config.mixer_types, config.ffn_types):
        kind = f"{mixer}+{ffn}"
        kinds[kind] += 1
        for name in ("mixer_norm", "mixer", "ffn_norm", "ffn"):
            if getattr(block, name) is not None:
                _tag(counter, getattr(block, name), f"{kind}/{name}")
        _tag(counter, block, f"{kind}/residual")
    if args.triton:
        _patch_triton_launches(counter)
    ids = torch.randint(0, config.vocab_size, (1, args.prefill))
    with torch.no_grad():
        out = model(ids, use_cache=True)
        cache = out.past_key_values
        token = out.logits[:, -1:].argmax(-1)
        model(token, past_key_values=cache, use_cache=True)  # the first step may widen caches once
        token = out.logits[:, -1:].argmax(-1)
        with counter:
            model(token, past_key_values=cache, use_cache=True)
    unit = "ATen ops + Triton launches" if args.triton else "non-view ATen ops"
    print(f"{args.preset}: {sum(counter.ops.values())} {unit}, about {sum(counter.kernels.values())} kernels "
          "per decoding step (per part: ops, kernels)")
    for part in sorted(counter.ops):
        kind = part.split("/")[0]
        blocks = kinds[kind] if kind in kinds else 1
        print(f"  {part:28} {counter.ops[part] / blocks:7.1f} {counter.kernels[part] / blocks:7.1f}"
              + (f"  (x{blocks} blocks)" if kind in kinds else ""))
        if args.top:
            common = counter.names[part].most_common(args.top)
            print("      " + ", ".join(f"{name} {n / blocks:g}" for name, n in common))


if __name__ == "__main__":
    main()
