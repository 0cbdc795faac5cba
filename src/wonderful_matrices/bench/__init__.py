"""Benchmarks: the paper's experiments and the fast paths, one module per experiment.

``REGISTRY`` maps each experiment name to its module; every module has
``run(out_dir, quick=False, device=None, ...) -> list[dict]`` that writes ``results.json`` / ``results.md`` /
a PNG into ``out_dir`` and prints its table. ``python -m wonderful_matrices.bench NAME [--quick] --out DIR``
or ``wm bench NAME [--quick] --out DIR`` runs one.
"""
from __future__ import annotations

import importlib
import inspect

REGISTRY = {
    "mqar": "wonderful_matrices.bench.mqar",          # claim 2: DMA on multi-query associative recall
    "position": "wonderful_matrices.bench.position",  # claim 1: RoPE inside SSD
    "experts": "wonderful_matrices.bench.experts",    # claim 3: expert retrieval speed
    "lm": "wonderful_matrices.bench.lm",              # claim 4: Cheems against popular architectures
    "kernels": "wonderful_matrices.bench.kernels",    # the fast paths against the best existing ones
    "ssd": "wonderful_matrices.bench.ssd",            # SSD implementations against each other and mamba_ssm's numbers
    "dma": "wonderful_matrices.bench.dma",            # DMA training cost vs length, decoding at long context
    "cdmoe_target": "wonderful_matrices.bench.cdmoe_target",  # CDMoE against its speed targets
    "flops": "wonderful_matrices.bench.flops",        # training FLOPs per token of each preset
    "profile": "wonderful_matrices.bench.profile",    # where a training step's time goes, preset by preset
    "generate": "wonderful_matrices.bench.generate",  # decoding at long context, batched, prefill; HF Llama anchor
}


def names() -> list[str]:
    """The experiment names ``run_benchmark`` accepts."""
    return list(REGISTRY)


def run_benchmark(name: str, out_dir, quick: bool = False, device=None, **options) -> list[dict]:
    """Run experiment ``name`` into ``out_dir``; ``options`` go to its ``run`` when it accepts them
    (e.g. ``budget_s`` for mqar); an option the experiment does not take raises ``ValueError``."""
    if name not in REGISTRY:
        raise ValueError(f"name={name!r} is not allowed: one of {names()}")
    try:
        module = importlib.import_module(REGISTRY[name])
    except ModuleNotFoundError as e:
        if e.name == REGISTRY[name]:
            raise ValueError(f"name={name!r} is not allowed: its module {REGISTRY[name]} is not in this "
                             "build") from None
        raise
    accepted = inspect.signature(module.run).parameters
    options = {k: v for k, v in options.items() if v is not None}
    for key in options:
        if key not in accepted:
            raise ValueError(f"{key}={options[key]!r} is not allowed: benchmark {name!r} takes "
                             f"{[p for p in accepted if p not in ('out_dir', 'quick', 'device')]}")
    return module.run(out_dir, quick=quick, device=device, **options)
