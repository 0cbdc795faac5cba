import importlib.util
import os
from pathlib import Path

import pytest
import torch

# Set in the child process that run_under_triton_interpreter starts: Triton's kernels run on the CPU there.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
interpreted_only = pytest.mark.skipif(not INTERPRETED, reason="runs in the TRITON_INTERPRET=1 child process")
compiles_real_kernels = pytest.mark.skipif(INTERPRETED, reason="compiles real kernels")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
    # Return the GPU memory a test's tensors cached to the driver: the CUDA files run as several pytest-xdist
    # processes on one GPU (scripts/gpu_check.sh), and blocks one process keeps cached are memory the others
    # cannot have (16 processes ran an 80 GB H100 out of memory in session 6).
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ computed in float64."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def run_under_triton_interpreter(test_file) -> None:
    """Run ``test_file`` in a child pytest with ``TRITON_INTERPRET=1`` and assert that it passed.

    The flag only takes effect if it is set before triton is first imported, which this process may already
    have done; the child's tests run the Triton kernels on the CPU in float32.
    """
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env["PYTHONPATH"] = str(root / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(root),
                           str(test_file)], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert " passed" in last and "failed" not in last, proc.stdout[-2000:]


def interpreter_child_test(test_file):
    """The test that reruns ``test_file`` under the Triton interpreter (skipped in that child itself), for a module
    whose ``interpreted_only`` tests run there: ``test_interpreted_in_a_subprocess = interpreter_child_test(__file__)``.
    """
    @pytest.mark.skipif(INTERPRETED, reason="this is the child process")
    def test_interpreted_in_a_subprocess():
        pytest.importorskip("triton")
        run_under_triton_interpreter(test_file)

    return test_interpreted_in_a_subprocess


def kept_for_backward(fn, *args, autocast_dtype: torch.dtype | None = None, graphs: list | None = None) -> list:
    """Compile ``fn`` (args -> a scalar) with AOTAutograd and its default partitioner (Inductor's), run it and its
    backward (under CPU autocast to ``autocast_dtype`` if given) -> the FX nodes of the forward graph's outputs:
    what is kept for the backward (the forward's results first). Which tensors survive to the backward is the
    partitioner's choice, not the autograd functions' own ``save_for_backward``. ``graphs``: a list that receives
    the forward graph module."""
    from torch._functorch.aot_autograd import aot_module_simplified
    from torch._functorch.partitioners import min_cut_rematerialization_partition

    kept = []

    def forward_compiler(gm, example_inputs):
        if graphs is not None:
            graphs.append(gm)
        output = next(node for node in gm.graph.nodes if node.op == "output")
        kept.extend(a for a in output.args[0] if hasattr(a, "op"))
        return gm

    def backend(gm, example_inputs):
        return aot_module_simplified(gm, example_inputs, fw_compiler=forward_compiler, bw_compiler=lambda g, _: g,
                                     partition_fn=min_cut_rematerialization_partition)

    torch._dynamo.reset()
    with torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        torch.compile(fn, backend=backend, fullgraph=True)(*args).backward()
    return kept


def compile_every_config(kernel, signature: dict, constants: dict, aligned: bool = False) -> list:
    """Compile an autotuned Triton kernel for sm_90 in every GPU configuration of its autotuner (``constants``
    merged with each configuration's; one 4-warp compile of ``kernel`` itself when it has none) -> a list of
    ``(config_constants, num_warps, compiled)``, each compiled with its configuration's warps and stages. One failing
    configuration fails a kernel at its first call."""
    configs = [(dict(c.kwargs), c.num_warps, c.num_stages) for c in getattr(kernel, "configs", [])] or [({}, 4, None)]
    fn = getattr(kernel, "fn", kernel)
    return [(config, warps, compile_for_sm90(fn, signature, {**constants, **config}, warps, stages, aligned=aligned))
            for config, warps, stages in configs]


def compile_for_sm90(fn, signature: dict, constants: dict, num_warps: int = 4, num_stages: int | None = None,
                     attrs: dict | None = None, aligned: bool = False):
    """Compile the Triton kernel ``fn`` (a ``JITFunction``) for an sm_90 GPU without one -> the compiled kernel
    (``.asm["ptx"]``, ``.metadata.shared``). ``signature`` maps every argument name to its type (``"*bf16"``,
    ``"i32"``, ``"constexpr"``), ``constants`` the constexpr ones to values. ``aligned``: every pointer and integer
    argument is specialised as divisible by 16 (aligned pointers, sizes multiples of 16: the case the GPU's
    launches hit for the library's shapes), as ``attrs``. Skips the test where this triton's private compiler API
    differs."""
    if aligned:
        attrs = {(i,): [["tt.divisibility", 16]] for i, v in enumerate(signature.values())
                 if v.startswith("*") or v in ("i32", "i64")}
    compiler = pytest.importorskip("triton.compiler")
    backends = pytest.importorskip("triton.backends.compiler")
    try:
        source = compiler.ASTSource(fn=fn, signature=signature, constexprs=constants, attrs=attrs)
        target = backends.GPUTarget("cuda", 90, 32)
    except TypeError as error:  # another triton version's private API
        pytest.skip(f"this triton's compiler API differs: {error}")
    options = {"num_warps": num_warps} if num_stages is None else {"num_warps": num_warps, "num_stages": num_stages}
    return compiler.compile(source, target=target, options=options)


def load_script(name: str):
    """``scripts/<name>.py`` imported as a module (the scripts are not a package), for the tests of a script."""
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def decode_through_beam_reorder(layer, x, pos, watch=None):
    """Decode ``x`` (2, 12, d) with an attention-like ``layer``: prefill 5 tokens, 3 one-token steps, then both rows
    take row 1's cache (``index_select``, as beam search does) and 4 more steps. ``watch(t, before, state)`` is called
    after step ``t`` of the first three with the cache entries from before it. Returns the last four steps' outputs
    (2, 4, ...) and their reference: a full forward of row 1's first 8 tokens followed by each row's own tokens."""
    beam = torch.tensor([1, 1])
    with torch.no_grad():
        state = {}
        layer(x[:, :5], pos[:, :5], None, state)
        for t in range(5, 8):
            before = dict(state)
            layer(x[:, t:t + 1], pos[:, t:t + 1], None, state)
            if watch is not None:
                watch(t, before, state)
        for name in list(state):
            state[name] = state[name].index_select(0, beam)
        outs = torch.cat([layer(x[:, t:t + 1], pos[:, t:t + 1], None, state) for t in range(8, 12)], 1)
        reordered = torch.cat([x[1:, :8].expand(2, -1, -1), x[:, 8:]], dim=1)
        return outs, layer(reordered, pos)[:, 8:]


def cut_after_three_steps(monkeypatch, run) -> None:
    """Runs ``run()`` (a training from step 0) interrupted (KeyboardInterrupt) where it fetches step 3's batch."""
    from wonderful_matrices.data import packing

    real_batch = packing.PackedRows.train_batch

    def cut_at_step_3(self, step, *args, **kwargs):
        if step == 3:
            raise KeyboardInterrupt
        return real_batch(self, step, *args, **kwargs)

    monkeypatch.setattr(packing.PackedRows, "train_batch", cut_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(packing.PackedRows, "train_batch", real_batch)
