"""The host side of an eager decoding step on the GPU's code path (Triton backends; under TRITON_INTERPRET=1 here):
after the first step, no launch goes through a Triton autotuner's per-call Python and no host code calls a Triton
constexpr function (``triton.cdiv``, ``triton.next_power_of_2``: microseconds each on the host), no argument check
calls ``require`` (whose message arguments are built on every call) and ``nn.Module.__getattr__`` (a parameter or
submodule looked up) runs at most a bounded number of times per block; and a kernel launched past its autotuner gives
the same outputs as through it.

Triton decides interpreted vs compiled when it is imported, so ``test_interpreted_in_a_subprocess`` reruns this file
with ``TRITON_INTERPRET=1``; there the real tests run.
"""
import sys

import pytest
import torch
from torch import nn

from conftest import interpreted_only, interpreter_child_test, load_script

pytest.importorskip("triton")

from wonderful_matrices.errors import reject, require
from wonderful_matrices.models import presets
from wonderful_matrices.models.modeling import CheemsForCausalLM

test_interpreted_in_a_subprocess = interpreter_child_test(__file__)


class HostCalls:
    """Counts, while inside, the calls of ``Autotuner.run`` and of Triton constexpr functions made by the host, with
    every kernel launch a no-op (so only host code runs; outputs stay unwritten)."""

    def __enter__(self):
        from triton.runtime.autotuner import Autotuner
        from triton.runtime.interpreter import InterpretedFunction
        from triton.runtime.jit import ConstexprFunction

        self.autotuner_runs = self.constexpr_calls = 0
        self._saved = Autotuner.run, ConstexprFunction.__call__, InterpretedFunction.run
        tune, constexpr, _ = self._saved

        def counted_tune(autotuner, *args, **kwargs):
            self.autotuner_runs += 1
            return tune(autotuner, *args, **kwargs)

        def counted_constexpr(fn, *args, **kwargs):
            self.constexpr_calls += 1
            return constexpr(fn, *args, **kwargs)

        Autotuner.run, ConstexprFunction.__call__ = counted_tune, counted_constexpr
        InterpretedFunction.run = lambda *args, **kwargs: None
        return self

    def __exit__(self, *exc):
        from triton.runtime.autotuner import Autotuner
        from triton.runtime.interpreter import InterpretedFunction
        from triton.runtime.jit import ConstexprFunction

        Autotuner.run, ConstexprFunction.__call__, InterpretedFunction.run = self._saved


class PythonCalls:
    """Counts, while inside, the calls of the Python functions ``functions`` (name -> function) by their code."""

    def __init__(self, **functions):
        self.names = {fn.__code__: name for name, fn in functions.items()}
        self.counts = dict.fromkeys(functions, 0)

    def _profile(self, frame, event, arg):
        if event == "call" and frame.f_code in self.names:
            self.counts[self.names[frame.f_code]] += 1

    def __enter__(self):
        sys.setprofile(self._profile)
        return self

    def __exit__(self, *exc):
        sys.setprofile(None)


def _triton_model_and_step():
    """cheems-tiny (SSD and DMA blocks, CDMoE in each) on its Triton backends, a cache holding a prompt, and a
    callable running one eager one-token step on it (already run once: tuned and set up) — the step
    ``scripts/decode_host.py`` measures."""
    host = load_script("decode_host")
    torch.manual_seed(0)
    model = CheemsForCausalLM(presets.get("cheems-tiny")).eval()
    host.use_triton_backends(model)
    return model, host.filled_step(model, 16)


@interpreted_only
def test_eager_triton_decoding_step_skips_autotuner_and_constexpr_calls():
    _, step = _triton_model_and_step()
    with HostCalls() as calls:
        step()
    assert (calls.autotuner_runs, calls.constexpr_calls) == (0, 0)


@interpreted_only
def test_eager_triton_decoding_step_calls_no_require_and_few_module_lookups():
    model, step = _triton_model_and_step()
    with HostCalls(), PythonCalls(require=require, reject=reject, getattr=nn.Module.__getattr__) as calls:
        step()
    assert (calls.counts["require"], calls.counts["reject"]) == (0, 0)
    # per block: each submodule, parameter and buffer its step uses looked up about once (a CDMoE's eleven tensors,
    # an SSD mixer's six, ...), plus the Linear modules' own weight lookups
    assert calls.counts["getattr"] <= 40 * model.config.num_hidden_layers


@interpreted_only
def test_cdmoe_decode_step_past_the_autotuner_is_the_same():
    from wonderful_matrices.ops.cdmoe import decode_kernels, decode_step

    torch.manual_seed(0)
    T, d, inner, H, n, dk = 3, 24, 40, 2, 5, 6
    x = torch.randn(T, d)
    weights = dict(gate_w=torch.randn(inner, d), up_w=torch.randn(inner, d), down_w=torch.randn(d, inner),
                   query_w=torch.randn(H * 2 * dk, d), keys=torch.randn(H, 2, n, dk),
                   down_table=torch.randn(n * n, d), up_table=torch.randn(n * n, d))
    for launch in (decode_kernels._project, decode_kernels._route_mix, decode_kernels._down):
        launch.chosen.clear()
    first = decode_step(x, top_k=3, **weights)  # through the autotuners (they choose)
    assert all(len(launch.chosen) == 1
               for launch in (decode_kernels._project, decode_kernels._route_mix, decode_kernels._down))
    second = decode_step(x, top_k=3, **weights)  # the chosen configurations launched directly
    assert not first.isnan().any()
    assert torch.equal(first, second)
