"""``wm bench profile``: the quick path (CPU, tiny presets) writes the per-operator tables, the side-by-side table
and a Chrome trace per model; bad options are refused."""
import gzip
import json

import pytest

from wonderful_matrices import bench
from wonderful_matrices.bench import profile


def test_quick_profile_writes_tables_and_traces(tmp_path):
    summary = bench.run_benchmark("profile", tmp_path, quick=True, presets="llama-tiny", steps=1, seq_len=16,
                                  batch=1, variants="fused,unfused")
    assert [(s["preset"], s["variant"]) for s in summary] == [("llama-tiny", "fused"), ("llama-tiny", "unfused")]
    assert all(s["wall_ms_per_step"] > 0 and s["gpu_busy"] is None for s in summary)  # unprofiled; no GPU here
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["experiment"] == "profile" and len(data["rows"]) == 2
    for label in ("llama-tiny fused", "llama-tiny unfused"):
        operators = data["meta"]["tables"][label]["operators"]
        assert operators and abs(sum(r["share"] for r in operators) - 1.0) < 1e-6
        assert all(r["calls"] > 0 and r["cpu_ms"] >= 0 for r in operators)
        names = {r["name"] for r in operators}
        assert "aten::mm" in names
        trace = tmp_path / f"trace-{label.replace(' ', '-')}.json.gz"
        assert "traceEvents" in json.loads(gzip.decompress(trace.read_bytes()))
    fused_ops = {r["name"] for r in data["meta"]["tables"]["llama-tiny fused"]["operators"]}
    assert "ChunkedLinearCrossEntropy" in fused_ops  # the fused loss ran
    md = (tmp_path / "results.md").read_text()
    assert "llama-tiny fused (a) against llama-tiny unfused (b)" in md and "top 15 operators" in md


@pytest.mark.parametrize("options,match", [
    (dict(presets="llama-huge"), "presets"),
    (dict(variants="fast"), "variants"),
    (dict(steps=0), "steps"),
])
def test_bad_options(tmp_path, options, match):
    with pytest.raises(ValueError, match=match):
        profile.run(tmp_path, quick=True, **options)


def test_wm_bench_passes_presets_and_variants(tmp_path, monkeypatch):
    from wonderful_matrices.cli import main

    seen = {}
    monkeypatch.setattr(profile, "run", lambda out_dir, quick=False, device=None, presets=None, steps=None,
                        variants=None: seen.update(presets=presets, steps=steps, variants=variants) or [])
    assert main(["bench", "profile", "--out", str(tmp_path), "--presets", "cheems-base,llama-base",
                 "--variants", "fused,unfused", "--steps", "2"]) == 0
    assert seen == {"presets": "cheems-base,llama-base", "steps": 2, "variants": "fused,unfused"}


def test_compiled_variant_and_a_compile_failure(tmp_path, monkeypatch):
    """``compiled`` profiles the step under torch.compile (aot_eager here: Inductor compiles for minutes on the CPU);
    a preset that fails to compile leaves a row with its error, and the other presets run."""
    from wonderful_matrices.bench import lm_common

    monkeypatch.setattr(profile, "compiled_lm_loss", lambda: lm_common.compiled_lm_loss("aot_eager"))
    summary = profile.run(tmp_path, quick=True, presets="llama-tiny", steps=1, seq_len=16, batch=1,
                          variants="compiled")
    assert [(s["preset"], s["variant"]) for s in summary] == [("llama-tiny", "compiled")]
    tables = json.loads((tmp_path / "results.json").read_text())["meta"]["tables"]
    operators = tables["llama-tiny compiled"]["operators"]
    assert any("CompiledFunction" in r["name"] for r in operators)  # the compiled forward and backward ran

    def broken():
        def fail(*args):
            raise RuntimeError("cannot compile\nmore")
        return fail

    monkeypatch.setattr(profile, "compiled_lm_loss", broken)
    summary = profile.run(tmp_path, quick=True, presets="llama-tiny,cheems-tiny", steps=1, seq_len=16, batch=1,
                          variants="fused,compiled")
    assert [(s["preset"], s["variant"], s.get("error")) for s in summary] == [
        ("llama-tiny", "fused", None), ("llama-tiny", "compiled", "RuntimeError: cannot compile"),
        ("cheems-tiny", "fused", None), ("cheems-tiny", "compiled", "RuntimeError: cannot compile")]
    assert "RuntimeError: cannot compile" in (tmp_path / "results.md").read_text()
