"""Where the ATen ops of one training step come from: every non-view op of a preset's forward + backward (+ the
AdamW update), counted by op and by the line of the package that issued it, with the bytes the op writes.

    PYTHONPATH=src python scripts/step_ops.py cheems-base                      # CPU (torch) paths, float32
    PYTHONPATH=src python scripts/step_ops.py cheems-base --autocast           # + bf16 autocast: its casts
    TRITON_INTERPRET=1 PYTHONPATH=src python scripts/step_ops.py cheems-base --triton --small
                                                                               # the paths CUDA takes

A forward op is attributed to the innermost frame under ``wonderful_matrices/`` of its Python stack. A backward op
runs in the autograd engine: it is attributed to its autograd node (``MulBackward0``, ``ProductKeyTopKBackward``, …)
and the package line whose forward created that node (anomaly mode keeps the forward stack). ``--triton`` sets every
backend switch to ``"triton"`` and counts each interpreted Triton launch by kernel name (the interpreter's own
tensor traffic is not counted). ``--small`` shrinks the widths (cheems-base's layer layout and routing shape kept)
so the interpreter finishes in minutes. The counts are per step; the bytes are those of this run's shapes.
"""
from __future__ import annotations

import argparse
import collections
import os
import traceback

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from wonderful_matrices.bench.lm_common import optimizer_step
from wonderful_matrices.models import CheemsForCausalLM, presets

PACKAGE = os.sep + "wonderful_matrices" + os.sep
# allocations and metadata: no kernel on a GPU (``full`` is how the interpreter poisons a kernel's ``empty`` output)
NO_KERNEL = {"empty", "empty_like", "empty_strided", "new_empty", "_unsafe_view", "full", "detach", "lift_fresh",
             "set_"}
SMALL = dict(hidden_size=128, intermediate_size=128, vocab_size=512, num_attention_heads=4, num_key_value_heads=2,
             head_dim=32, ssd_num_heads=2, ssd_head_dim=32, ssd_state_size=32, ssd_chunk_size=32, keep_window=16)


def _site(frames) -> str:
    for frame in reversed(frames):
        if PACKAGE in frame.filename:
            path = frame.filename.split(PACKAGE, 1)[1]
            return f"{path}:{frame.lineno} {frame.name}"
    return "-"


def _forward_site(node) -> str:
    trace = node.metadata.get("traceback_") if node is not None else None
    if not trace:
        return "-"
    lines = [line for entry in trace for line in entry.splitlines()]
    for i in range(len(lines) - 1, -1, -1):
        text = lines[i].strip()
        if text.startswith("File ") and PACKAGE in text:
            path = text.split(PACKAGE, 1)[1].split('"')[0]
            lineno = text.split("line ")[1].split(",")[0]
            name = text.rsplit(" in ", 1)[-1]
            return f"{path}:{lineno} {name}"
    return "-"


class _Recorder(TorchDispatchMode):
    """Counts non-view ATen ops (and interpreted Triton launches) by (op, site), with the bytes they write."""

    def __init__(self):
        super().__init__()
        self.calls = collections.Counter()
        self.bytes = collections.Counter()
        self.paused = 0

    def record(self, name: str, written: int) -> None:
        node = torch._C._current_autograd_node()
        if node is not None:
            site = f"[bwd {node.name()}] {_forward_site(node)}"
        else:
            site = _site(traceback.extract_stack()[:-2])
        self.calls[(name, site)] += 1
        self.bytes[(name, site)] += written

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if not self.paused and not func.is_view and name not in NO_KERNEL:
            outs = out if isinstance(out, (tuple, list)) else (out,)
            written = sum(t.numel() * t.element_size() for t in outs if isinstance(t, torch.Tensor))
            if name.endswith("_") or name in ("copy_", "fill_"):  # in place: writes its first argument
                written = args[0].numel() * args[0].element_size() if isinstance(args[0], torch.Tensor) else 0
            self.record(name, written)
        return out


def _count_triton_launches(recorder: _Recorder) -> None:
    from triton.runtime import interpreter

    call = interpreter.GridExecutor.__call__

    def counted(self, *args, **kwargs):
        recorder.record("triton:" + self.fn.__name__, 0)
        recorder.paused += 1
        try:
            return call(self, *args, **kwargs)
        finally:
            recorder.paused -= 1

    interpreter.GridExecutor.__call__ = counted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("preset", nargs="?", default="cheems-base")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--triton", action="store_true", help="every backend 'triton' (needs TRITON_INTERPRET=1)")
    parser.add_argument("--small", action="store_true", help="narrow widths, the preset's layout and routing")
    parser.add_argument("--autocast", action="store_true", help="bf16 autocast on the CPU (no --triton)")
    parser.add_argument("--ops", default="", help="comma-separated op names to list by site (default: all)")
    args = parser.parse_args()
    overrides = dict(SMALL) if args.small else {}
    if args.triton:
        overrides.update(ssd_backend="triton", cdmoe_backend="triton")
    config = presets.get(args.preset, **overrides)
    torch.manual_seed(0)
    model = CheemsForCausalLM(config).train()
    if args.triton:
        from wonderful_matrices.ops import common

        usable = common.triton_usable
        for module in model.modules():
            if getattr(module, "backend", None) == "auto":
                module.backend = "triton"
        import sys
        for mod in list(sys.modules.values()):  # "auto" picks triton on the CPU too (as on CUDA)
            if getattr(mod, "__name__", "").startswith("wonderful_matrices") and hasattr(mod, "resolve_backend"):
                original = mod.resolve_backend
                mod.resolve_backend = (lambda original: lambda b, a, d, o: original(
                    "triton" if b == "auto" and "triton" in tuple(o) and "triton" in tuple(a) and usable(d) else b,
                    a, d, o))(original)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rows = torch.randint(0, config.vocab_size, (args.batch, args.seq_len + 1))
    device = torch.device("cpu")
    optimizer_step(model, opt, rows, device, clip=1.0)  # AdamW state exists: the step below is a steady one
    recorder = _Recorder()
    if args.triton:
        _count_triton_launches(recorder)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.autocast)
    with torch.autograd.set_detect_anomaly(True, check_nan=False), recorder:
        if args.autocast:
            import wonderful_matrices.bench.lm_common as lm_common
            lm_common.training_autocast = lambda _device: autocast
        optimizer_step(model, opt, rows, device, clip=1.0)
    by_op = collections.Counter()
    for (name, _), n in recorder.calls.items():
        by_op[name] += n
    wanted = set(filter(None, args.ops.split(",")))
    print(f"{args.preset}{' (small)' if args.small else ''}: batch {args.batch} x {args.seq_len}, "
          f"{'triton' if args.triton else 'torch'}{', bf16 autocast' if args.autocast else ''}; "
          f"{sum(by_op.values())} ops per step")
    for name, total in by_op.most_common():
        if wanted and name not in wanted:
            continue
        mb = sum(b for (n, _), b in recorder.bytes.items() if n == name) / 2 ** 20
        print(f"\n{name}: {total} calls, {mb:.2f} MiB written")
        for (n, site), calls in sorted(recorder.calls.items(), key=lambda kv: -kv[1]):
            if n == name:
                print(f"  {calls:5d}  {recorder.bytes[(n, site)] / 2 ** 20:9.3f} MiB  {site}")


if __name__ == "__main__":
    main()
