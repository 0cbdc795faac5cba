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

``--kernels`` (implies ``--triton``) counts the kernels a CUDA device would launch for one decoding step, the step
``wm bench generate`` profiles (``bench.decode_common.step_launches``: a direct one-token call on a cache filled to
``--context`` tokens, without the graph): the Triton launches plus the ATen ops that launch a kernel, i.e. all but
the metadata-only ops of ``METADATA_OPS`` (kernel outputs are allocated unpoisoned while counting, as on CUDA:
``ops.triton_utils.poisoned_empty`` fills them under the interpreter). It prints them per block part
(``ssd.mixer``, ``dma.ffn_norm``, ...; ``model`` is the work outside the blocks' modules: token checks, positions,
cache bookkeeping), with the ops of each.

    PYTHONPATH=src python scripts/decode_host.py --kernels cheems-tiny@12

``--host-only`` (implies ``--triton``) times the host work of that same step on the GPU's code path without running
a kernel: every Triton launch returns at once (the interpreter's entry point is replaced while timing; outputs
stay unwritten and allocated unpoisoned, as on CUDA), so what is timed is everything a CUDA host does except the
launches themselves: (a) ms per step, best of ``--repeats`` runs of ``--steps`` steps, split per block part
(inclusive time of each labelled module, ``model`` the rest). (b) estimates the launches' own Python: per recorded
launch of the step, triton's ``JITFunction.run`` work up to the driver call (argument binding and
specialisation, the cache key, the kernel-cache lookup, the grid) timed on a ``JITFunction`` of the same kernel
with a CUDA (sm_90) target's binder, plus for launches through ``@triton.autotune`` the autotuner's per-call work
with two configurations (on the GPU it computes its key every call; the interpreter's single configuration
skips that). Not included: the driver's current device/stream queries and the C launcher (a few µs per launch on
a GPU host). ``--profile N`` prints the N functions of most own time (cProfile) over the timed steps.

    PYTHONPATH=src python scripts/decode_host.py --host-only --profile 25 cheems-tiny@12
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

from wonderful_matrices.bench.decode_common import fill_cache
from wonderful_matrices.models import CheemsCache, presets
from wonderful_matrices.models.modeling import CheemsForCausalLM
from wonderful_matrices.ops import triton_utils


class LaunchAwareMode(TorchDispatchMode):
    """A dispatch mode that, with ``count_launches``, also sees every (interpreted) Triton launch: :meth:`launched`
    is called per launch, and ``in_launch`` is non-zero while the interpreter's own ATen ops run."""

    def __init__(self, count_launches: bool):
        super().__init__()
        self.count_launches = count_launches
        self.in_launch = 0

    def launched(self, kernel) -> None:
        """Called once per Triton launch (``kernel``: the interpreted function)."""

    def __enter__(self):
        if self.count_launches:
            from triton.runtime.interpreter import InterpretedFunction

            self._run = InterpretedFunction.run
            mode = self

            def run(kernel, *args, **kwargs):
                mode.launched(kernel)
                mode.in_launch += 1
                try:
                    return mode._run(kernel, *args, **kwargs)
                finally:
                    mode.in_launch -= 1

            InterpretedFunction.run = run
        return super().__enter__()

    def __exit__(self, *exc):
        if self.count_launches:
            from triton.runtime.interpreter import InterpretedFunction

            InterpretedFunction.run = self._run
        return super().__exit__(*exc)


class SyncCounter(LaunchAwareMode):
    """Counts the ATen ops run inside it and the host reads of tensor values, with the source line of each read;
    with ``count_launches`` also the Triton launches (interpreted), whose own ATen ops are not counted."""

    def __init__(self, count_launches: bool = False):
        super().__init__(count_launches)
        self.ops = 0
        self.syncs = 0
        self.launches = 0
        self.where: collections.Counter = collections.Counter()

    def launched(self, kernel) -> None:
        self.launches += 1

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


# ATen ops that launch no kernel on CUDA: views, metadata changes and allocations without a fill.
METADATA_OPS = frozenset({
    "view", "_unsafe_view", "reshape", "_reshape_alias", "as_strided", "alias", "detach", "t", "transpose",
    "permute", "expand", "squeeze", "unsqueeze", "slice", "select", "split", "split_with_sizes", "unbind", "chunk",
    "narrow", "unflatten", "flatten", "view_as_real", "view_as_complex", "lift_fresh", "set_", "resize_",
    "empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided"})


def launches_kernel(func) -> bool:
    """Whether the ATen op ``func`` launches a kernel on CUDA (see ``METADATA_OPS``)."""
    return not (func.is_view or func.overloadpacket.__name__ in METADATA_OPS)


class KernelCounter(LaunchAwareMode):
    """The kernels a CUDA step would launch, by block part: the Triton launches (interpreted) and the ATen ops
    that launch one (``launches_kernel``), each credited to the innermost labelled module running (``labels``:
    module -> name; ``"model"`` outside them)."""

    def __init__(self, labels: dict):
        super().__init__(count_launches=True)
        self.labels = labels
        self.stack = ["model"]
        self.kernels: collections.Counter = collections.Counter()  # (part, op name) -> count
        self.hooks = []

    def launched(self, kernel) -> None:
        self.kernels[self.stack[-1], f"triton:{kernel.fn.__name__}"] += 1

    def __enter__(self):
        for module, label in self.labels.items():
            self.hooks.append(module.register_forward_pre_hook(lambda *_, label=label: self.stack.append(label)))
            self.hooks.append(module.register_forward_hook(lambda *_: self.stack.pop() and None))
        self._interpreting, triton_utils.interpreting = triton_utils.interpreting, lambda: False  # no poisoning
        return super().__enter__()

    def __exit__(self, *exc):
        triton_utils.interpreting = self._interpreting
        for hook in self.hooks:
            hook.remove()
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.in_launch and launches_kernel(func):
            self.kernels[self.stack[-1], f"aten:{func.overloadpacket.__name__}"] += 1
        return func(*args, **(kwargs or {}))


def block_labels(model: CheemsForCausalLM) -> dict:
    """Module -> part name: ``KIND.mixer_norm``, ``KIND.mixer``, ``KIND.ffn_norm``, ``KIND.ffn`` of each block (KIND
    its mixer type), ``embed``, ``final_norm``, ``lm_head``."""
    labels = {model.model.embed_tokens: "embed", model.model.norm: "final_norm", model.lm_head: "lm_head"}
    for kind, block in zip(model.config.mixer_types, model.model.layers):
        for part in ("mixer_norm", "mixer", "ffn_norm", "ffn"):
            if getattr(block, part, None) is not None:
                labels[getattr(block, part)] = f"{kind}.{part}"
    return labels


def filled_step(model: CheemsForCausalLM, context: int):
    """The decoding step ``bench.decode_common.step_launches`` profiles on CUDA, as a no-argument callable: a direct
    one-token call of ``model`` on a cache filled to ``context`` tokens, without the graph (run once here for the
    lazy set-up)."""
    prompt = torch.randint(0, model.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
    cache = CheemsCache(model.config)
    token = prompt[:, -1:]

    @torch.no_grad()
    def step():
        return model(input_ids=token, past_key_values=cache, use_cache=True, graphed_decoding=False)

    with torch.no_grad():
        model(input_ids=prompt, past_key_values=cache, use_cache=True)
        fill_cache(cache, model.config, context)
    step()
    return step


def count_step_kernels(model: CheemsForCausalLM, context: int) -> KernelCounter:
    """The kernels of one decoding step of ``model`` (Triton backends, under the interpreter) on a cache filled to
    ``context`` tokens, the call ``bench.decode_common.step_launches`` profiles on CUDA."""
    step = filled_step(model, context)
    counter = KernelCounter(block_labels(model))
    with counter:
        step()
    return counter


class StubbedLaunches:
    """While inside, every (interpreted) Triton launch returns at once without running its kernel, and kernel
    outputs are allocated unpoisoned (``torch.empty``, as on CUDA). With ``record``, each launch is appended to
    ``launches`` as ``(kernel, args, kwargs, via)``: ``via`` is ``(autotuner, args, kwargs)`` of the
    ``@triton.autotune`` call it came through, else None (recording wraps the autotuner: time without it)."""

    def __init__(self, record: bool = False):
        self.record = record
        self.launches: list = []
        self._autotuning: list = []

    def __enter__(self):
        from triton.runtime.autotuner import Autotuner
        from triton.runtime.interpreter import InterpretedFunction

        self._run, self._tune = InterpretedFunction.run, Autotuner.run
        self._interpreting, triton_utils.interpreting = triton_utils.interpreting, lambda: False
        launches, autotuning = self.launches, self._autotuning

        if self.record:
            def run(kernel, *args, **kwargs):
                launches.append((kernel, args, kwargs, autotuning[-1] if autotuning else None))

            def tune(autotuner, *args, **kwargs):
                autotuning.append((autotuner, args, kwargs))
                try:
                    return self._tune(autotuner, *args, **kwargs)
                finally:
                    autotuning.pop()

            Autotuner.run = tune
        else:
            def run(kernel, *args, **kwargs):
                return None
        InterpretedFunction.run = run
        return self

    def __exit__(self, *exc):
        from triton.runtime.autotuner import Autotuner
        from triton.runtime.interpreter import InterpretedFunction

        InterpretedFunction.run, Autotuner.run = self._run, self._tune
        triton_utils.interpreting = self._interpreting


def best_time(fn, calls: int, repeats: int) -> float:
    """Seconds per call of ``fn``: the best of ``repeats`` runs of ``calls`` calls."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def part_times(model: CheemsForCausalLM, step, calls: int) -> collections.Counter:
    """Seconds per step spent inside each labelled block part (``block_labels``, inclusive, hooks' own cost
    included), ``model`` for the rest of the step."""
    spent: collections.Counter = collections.Counter()
    starts, hooks = [], []
    for module, label in block_labels(model).items():
        hooks.append(module.register_forward_pre_hook(lambda *_: starts.append(time.perf_counter())))
        hooks.append(module.register_forward_hook(
            lambda *_, label=label: spent.update({label: time.perf_counter() - starts.pop()})))
    try:
        start = time.perf_counter()
        for _ in range(calls):
            step()
        total = time.perf_counter() - start
    finally:
        for hook in hooks:
            hook.remove()
    spent["model"] = total - sum(spent.values())
    return collections.Counter({part: t / calls for part, t in spent.items()})


def launch_costs(launches: list, calls: int = 200) -> tuple[float, float]:
    """Estimated host seconds of the recorded ``launches`` (see ``StubbedLaunches``) on a CUDA host, as
    ``(jit, autotune)``: ``JITFunction.run``'s work up to the driver call per launch (binding and specialising the
    arguments, the cache key, the kernel-cache lookup, the grid), timed with a CUDA sm_90 target's binder on a
    ``JITFunction`` of the same kernel; and the autotuner's per-call work for the launches made through one, timed
    on a copy of it with two configurations (already tuned) whose launch is a no-op."""
    import copy

    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import JITFunction, compute_cache_key, create_function_from_signature

    backend = make_backend(GPUTarget("cuda", 90, 32))
    binders: dict = {}  # python function -> (binder, kernel-key cache, kernel cache)
    jit_total = tune_total = 0.0
    for kernel, args, kwargs, via in launches:
        if kernel.fn not in binders:
            jit = JITFunction(kernel.fn)
            binders[kernel.fn] = (create_function_from_signature(jit.signature, jit.params, backend), {}, {})
        binder, key_cache, kernel_cache = binders[kernel.fn]
        grid = kwargs["grid"]
        options = {k: v for k, v in kwargs.items() if k not in ("grid", "warmup")}

        def jit_part():
            kw = dict(options, debug=False, instrumentation_mode="")
            bound, specialization, opts = binder(*args, **kw)
            kernel_cache.get(compute_cache_key(key_cache, specialization, opts))
            grid(bound) if callable(grid) else grid

        jit_total += best_time(jit_part, calls, 3)
        if via is not None:
            autotuner, tune_args, tune_kwargs = via
            tuner = copy.copy(autotuner)
            tuner.configs = [autotuner.configs[0], copy.copy(autotuner.configs[0])]
            tuner.cache, tuner.fn = {}, type("NoLaunch", (), {"run": staticmethod(lambda *a, **k: None)})
            tuner._bench = lambda *a, **k: [0.0]
            tuner.run(*tune_args, **tune_kwargs)  # tunes once: later calls find the key
            tune_total += best_time(lambda: tuner.run(*tune_args, **tune_kwargs), calls, 3)
    return jit_total, tune_total


def print_host_only(spec: str, model: CheemsForCausalLM, context: int, steps: int, repeats: int,
                    profile: int) -> None:
    """The ``--host-only`` report of one model (see the module docstring)."""
    step = filled_step(model, context)
    with StubbedLaunches(record=True) as recorded:
        step()
    with StubbedLaunches():
        step()
        host = best_time(step, steps, repeats)
        parts = part_times(model, step, steps)
        if profile:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            profiler.runcall(lambda: [step() for _ in range(steps)])
    jit, tune = launch_costs(recorded.launches)
    launches = len(recorded.launches)
    tuned = sum(via is not None for *_, via in recorded.launches)
    print(f"{spec}: host {host * 1e3:.2f} ms per step without launches (a); {launches} Triton launches "
          f"({tuned} through an autotuner) ≈ {(jit + tune) * 1e3:.2f} ms of launch Python (b: "
          f"{jit / launches * 1e6:.1f} µs binding per launch, {tune * 1e3:.2f} ms autotuner; the driver "
          f"calls and C launcher not included)")
    layers = collections.Counter(model.config.mixer_types)
    for part, t in sorted(parts.items(), key=lambda item: -item[1]):
        per = layers[part.split(".")[0]] if "." in part else 1
        each = f" ({t / per * 1e6:.0f} µs per layer)" if "." in part else ""
        print(f"    {part:16s} {t * 1e3:6.3f} ms{each}")
    if profile:
        stats = pstats.Stats(profiler)
        stats.sort_stats("tottime").print_stats(profile)


def print_kernels(spec: str, model: CheemsForCausalLM, counter: KernelCounter) -> None:
    """Totals, then per part the kernels per layer of that kind and their ops."""
    kernels = counter.kernels
    triton_launches = sum(n for (_, op), n in kernels.items() if op.startswith("triton:"))
    total = sum(kernels.values())
    print(f"{spec}: {total} CUDA kernels per decoding step ({triton_launches} Triton launches, "
          f"{total - triton_launches} ATen kernels)")
    layers = collections.Counter(model.config.mixer_types)
    for part in sorted({p for p, _ in kernels}):
        ops = {op: n for (p, op), n in kernels.items() if p == part}
        per = layers[part.split(".")[0]] if "." in part else 1
        detail = ", ".join(f"{n / per:g} {op}" for op, n in sorted(ops.items()))
        each = f" ({sum(ops.values()) / per:g} per layer)" if "." in part else ""
        print(f"    {part:16s} {sum(ops.values()):4d}{each}: {detail}")


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
    parser.add_argument("--kernels", action="store_true",
                        help="count the CUDA kernels of one decoding step per block part (implies --triton)")
    parser.add_argument("--context", type=int, default=64,
                        help="tokens in the cache of the --kernels / --host-only step")
    parser.add_argument("--host-only", action="store_true",
                        help="time the GPU path's host work of one step with the Triton launches stubbed out, and "
                             "estimate the launches' own Python (implies --triton)")
    parser.add_argument("--steps", type=int, default=50, help="steps per timed run of --host-only")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="with --host-only: print the N functions of most own time (cProfile)")
    args = parser.parse_args()
    args.triton = args.triton or args.kernels or args.host_only
    if args.triton and os.environ.get("TRITON_INTERPRET") != "1":  # must be set before triton is imported
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "TRITON_INTERPRET": "1"})
    torch.set_num_threads(1)
    prompt = torch.randint(0, 500, (1, 32), generator=torch.Generator().manual_seed(0))
    steps = 2 if args.triton else 10  # interpreted kernels are slow: fewer counted steps
    for spec in args.models:
        model = build(spec)
        if args.triton:
            use_triton_backends(model)
        if args.kernels:
            print_kernels(spec, model, count_step_kernels(model, args.context))
            continue
        if args.host_only:
            print_host_only(spec, model, args.context, args.steps, args.repeats, args.profile)
            continue
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
