"""The position, lm and kernels experiments and the registry: the quick paths at a reduced size (seconds)
produce well-formed results.json / results.md / plots."""
import importlib
import inspect
import json

import pytest
import torch

from wonderful_matrices import bench
from wonderful_matrices.bench import kernels, lm, position
from wonderful_matrices.data.corpora import shakespeare_documents


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """One play (~60 KB) as a local text corpus, with a shared tokenizer cache."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "play.txt").write_text(shakespeare_documents()[0][:60_000])
    return str(root / "play.txt"), root / "cache"


def _read(out):
    data = json.loads((out / "results.json").read_text())
    md = (out / "results.md").read_text()
    return data, md


def test_position_quick_path(tmp_path, small_corpus):
    data_path, cache = small_corpus
    size = dict(vocab_size=300, hidden_size=32, num_hidden_layers=8, heads=1, ssd_heads=1, head_dim=32,
                state=16, intermediate_size=64, seq_len=16, batch=4, eval_tokens=500)
    summary = position.run(tmp_path, quick=True, steps=2, size=size, data=data_path, cache_dir=cache)
    assert [s["variant"] for s in summary] == ["no_pe", "rope", "conv"] == list(position.DEFAULT_VARIANTS)
    data, md = _read(tmp_path)
    assert data["experiment"] == "position" and data["meta"]["seeds"] == 1
    # 1x, 2x and 4x score the same targets: whole rows of the longest (64) within the 500 tokens asked for
    assert data["meta"]["eval_tokens"] == 448
    assert [r["runs"] for r in data["rows"]] == ["mean of 1"] * 3 + ["seed 0"] * 3
    for s in data["rows"][:3]:
        for f in position.EVAL_FACTORS:
            assert 1.0 < s[f"ppl@{f}x"] < 1e4 and s[f"ppl@{f}x_min"] <= s[f"ppl@{f}x"] <= s[f"ppl@{f}x_max"]
    rope = next(s for s in data["rows"] if s["variant"] == "rope")
    assert rope["rope_gain@1x_%"] == 0.0
    no_pe = data["rows"][0]
    assert no_pe["rope_gain@2x_%"] == pytest.approx(100 * (no_pe["ppl@2x"] - rope["ppl@2x"]) / no_pe["ppl@2x"])
    assert "SSD + RoPE (unified)" in md and "rope_gain@4x_%" in md
    assert (tmp_path / "position.png").stat().st_size > 1000


def test_position_variants_differ_only_in_ssd_position():
    size = position.QUICK
    cfgs = {v: position.hybrid_config(v, size, 512) for v in position.VARIANTS}
    assert cfgs["rope"].layer_types == ["ssd"] * 7 + ["attn"]
    assert (cfgs["no_pe"].ssd_use_rope, cfgs["no_pe"].ssd_use_conv) == (False, False)
    assert (cfgs["rope"].ssd_use_rope, cfgs["rope"].ssd_use_conv) == (True, False)
    assert (cfgs["conv"].ssd_use_rope, cfgs["conv"].ssd_use_conv) == (False, True)
    assert [c.ssd_rope for c in cfgs.values()] == ["none", "fixed", "none", "data"]
    assert not cfgs["data"].ssd_use_conv


def test_position_runs_chosen_variants(tmp_path, small_corpus):
    data_path, cache = small_corpus
    size = dict(vocab_size=300, hidden_size=32, num_hidden_layers=8, heads=1, ssd_heads=1, head_dim=32,
                state=16, intermediate_size=64, seq_len=16, batch=4, eval_tokens=512)
    summary = position.run(tmp_path, quick=True, steps=2, size=size, data=data_path, cache_dir=cache,
                           variants="rope,data")
    assert [s["variant"] for s in summary] == ["rope", "data"]
    assert summary[1]["variant_name"] == "SSD + data-dependent rotary" and summary[0]["rope_gain@1x_%"] == 0.0
    for bad in ("data", "rope,foo", "rope,rope", ""):
        with pytest.raises(ValueError, match="variants"):
            position.run(tmp_path, quick=True, steps=2, size=size, data=data_path, cache_dir=cache, variants=bad)


def test_lm_quick_path(tmp_path, small_corpus):
    data_path, cache = small_corpus
    rows = lm.run(tmp_path, quick=True, steps=2, families=("cheems", "llama"), contexts=(40, 80), size="tiny",
                  vocab_size=300, seq_len=16, batch=2, data=data_path, cache_dir=cache, eval_tokens=256,
                  throughput_lengths=(16, 32))
    assert [(r["preset"], r["context"]) for r in rows] == [("cheems-tiny", 40), ("cheems-tiny", 80),
                                                         ("llama-tiny", 40), ("llama-tiny", 80)]
    data, md = _read(tmp_path)
    for r in data["rows"]:
        assert r["status"] == "ok" and r["decode_tokens_per_s"] > 0 and r["val_ppl"] > 1
        assert r["train_tokens_per_s"] > 0 and r["parameters"] > 0
    by = {(r["preset"], r["context"]): r for r in data["rows"]}
    # llama's cache grows with the context; cheems' DMA keeps at most keep_window keys and SSD a fixed state
    assert by[("llama-tiny", 80)]["cache_bytes_analytic"] == 2 * by[("llama-tiny", 40)]["cache_bytes_analytic"]
    assert by[("cheems-tiny", 80)]["cache_bytes_analytic"] == by[("cheems-tiny", 40)]["cache_bytes_analytic"]
    for n in (16, 32):
        assert all(r[f"train_tok_s@{n}"] > 0 for r in data["rows"])
        assert by[("llama-tiny", 40)][f"vs_llama@{n}"] == 1.0
        assert by[("cheems-tiny", 40)][f"vs_llama@{n}"] == pytest.approx(
            by[("cheems-tiny", 40)][f"train_tok_s@{n}"] / by[("llama-tiny", 40)][f"train_tok_s@{n}"])
    assert by[("cheems-tiny", 80)]["cache_vs_llama"] == pytest.approx(
        by[("cheems-tiny", 80)]["cache_bytes_analytic"] / by[("llama-tiny", 80)]["cache_bytes_analytic"])
    assert "cheems-tiny" in md and "vs_llama@32" in md and (tmp_path / "lm.png").stat().st_size > 1000


def test_lm_analytic_cache_matches_measured():
    from wonderful_matrices.models import CheemsForCausalLM, presets

    for name in ("llama-tiny", "cheems-tiny", "mamba2-tiny", "doge-tiny", "jamba-tiny"):
        cfg = presets.get(name, use_cache=True)
        torch.manual_seed(0)
        model = CheemsForCausalLM(cfg).eval()
        for context in (64, 5):  # past and within the DMA window (8)
            row = lm.decode_measurement(model, cfg, context, torch.device("cpu"), reps=1)
            # every byte: keys, values and states, DMA's biases and positions, attention's key mask
            assert row["cache_bytes_analytic"] == row["cache_bytes_measured"], (name, context, row)


def test_kernels_quick_path(tmp_path):
    rows = kernels.run(tmp_path, quick=True, parts=(), cdmoe_shape=(32, 16, 2, 4), cdmoe_experts=(64,),
                       loss_shape=(40, 8, 24))
    assert {r["implementation"] for r in rows} == {
        "expert_mixture (ours)", "gather + einsum", "linear_cross_entropy, chunk default",
        "linear_cross_entropy, chunk 4096", "linear_cross_entropy, chunk 8192", "F.cross_entropy, whole float32 logits"}
    data, md = _read(tmp_path)
    assert all(r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 for r in data["rows"])
    assert "not importable" in data["meta"]["mamba_ssm"] and "cdmoe_mixture" in md and "lm_loss" in md


def test_registry_names_and_errors(tmp_path):
    assert bench.names() == ["mqar", "position", "experts", "lm", "kernels", "ssd", "dma", "cdmoe_target", "flops",
                             "profile", "generate"]
    for name in bench.names():  # every registered experiment imports and has the common run signature
        params = list(inspect.signature(importlib.import_module(bench.REGISTRY[name]).run).parameters)
        assert params[:3] == ["out_dir", "quick", "device"], name
    with pytest.raises(ValueError, match="name"):
        bench.run_benchmark("nope", tmp_path)
    with pytest.raises(ValueError, match="budget_s"):
        bench.run_benchmark("position", tmp_path, quick=True, budget_s=3.0)


def test_wm_bench_passes_its_options_to_mqar(tmp_path, monkeypatch):
    from wonderful_matrices.bench import mqar
    from wonderful_matrices.cli import main

    seen = {}

    def fake_run(out_dir, quick=False, device=None, budget_s=None, steps=None, cells=None, mixers=None,
                 learning_rates=None, vocab_size=None):
        seen.update(budget_s=budget_s, steps=steps, cells=cells, mixers=mixers, learning_rates=learning_rates,
                    vocab_size=vocab_size)
        return []

    monkeypatch.setattr(mqar, "run", fake_run)
    assert main(["bench", "mqar", "--out", str(tmp_path), "--cells", "256:64", "--steps", "5", "--mixers", "dma",
                 "--learning-rates", "1e-3", "--vocab-size", "1024"]) == 0
    assert seen == {"budget_s": None, "steps": 5, "cells": "256:64", "mixers": "dma", "learning_rates": "1e-3",
                    "vocab_size": 1024}


def test_wm_bench_subcommand_reports_a_bad_option(tmp_path, capsys):
    from wonderful_matrices.cli import main

    assert main(["bench", "position", "--out", str(tmp_path), "--budget-s", "3"]) == 2
    assert "budget_s" in capsys.readouterr().err


@pytest.mark.parametrize("flags, fragment", [
    (["ssd", "--device", "foo"], "--device: got 'foo', expected auto, cpu, cuda or cuda:N"),
    (["flops", "--quick", "--out", "FILE"], "is not allowed: it is a file"),
] + ([(["ssd", "--device", "cuda"], "--device cuda: CUDA is not available here")]
     if not torch.cuda.is_available() else []))
def test_wm_bench_checks_device_and_out_before_running(tmp_path, capsys, flags, fragment):
    from wonderful_matrices.cli import main

    (tmp_path / "FILE").write_text("mine")
    argv = ["bench", *[str(tmp_path / f) if f == "FILE" else f for f in flags]]
    assert main(argv + ([] if "--out" in flags else ["--out", str(tmp_path / "out")])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("wm bench: error: ") and fragment in err[0], err
    assert (tmp_path / "FILE").read_text() == "mine" and not (tmp_path / "out").exists()


def test_wm_bench_flops_takes_a_comma_separated_preset_list(tmp_path):
    from wonderful_matrices.cli import main

    assert main(["bench", "flops", "--quick", "--presets", "llama-tiny,mamba2-tiny", "--out", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["preset"] for r in saved["rows"]] == ["llama-tiny", "mamba2-tiny"]


def test_lm_reports_compiled_throughput_beside_eager(tmp_path, small_corpus, monkeypatch):
    """``compiled=True``: ``compiled_tok_s@T`` and ``compiled_vs_llama@T`` beside the eager columns (kept), and a
    preset that fails to compile records the error instead of stopping the bench. The measurement itself is
    tests/models/test_compile.py's business; here it is stubbed (Inductor compiles for minutes on the CPU)."""
    data_path, cache = small_corpus
    speed = {("cheems-tiny", False): 100.0, ("cheems-tiny", True): None, ("llama-tiny", False): 50.0,
             ("llama-tiny", True): 80.0}

    def fake_throughput(config, seq_len, tokens, device, compiled=False, graphed=False):
        assert not graphed  # off by default off CUDA
        name = "cheems-tiny" if "cdmoe" in config.ffn_types else "llama-tiny"
        tokens_per_s = speed[(name, compiled)]
        return {"tokens_per_s": tokens_per_s, "peak_memory_gb": None,
                "error": None if tokens_per_s else "BackendCompilerFailed: no"}

    monkeypatch.setattr(lm, "training_throughput", fake_throughput)
    lm.run(tmp_path, quick=True, steps=2, families=("cheems", "llama"), contexts=(40,), size="tiny",
           vocab_size=300, seq_len=16, batch=2, data=data_path, cache_dir=cache, eval_tokens=256,
           throughput_lengths=(16,), compiled=True)
    data, md = _read(tmp_path)
    by = {r["preset"]: r for r in data["rows"]}
    assert by["cheems-tiny"]["train_tok_s@16"] == 100.0 and by["cheems-tiny"]["vs_llama@16"] == 2.0
    assert by["cheems-tiny"]["compiled_tok_s@16"] is None and by["cheems-tiny"]["compiled_vs_llama@16"] is None
    assert by["cheems-tiny"]["compile_error@16"] == "BackendCompilerFailed: no"
    assert by["llama-tiny"]["compiled_tok_s@16"] == 80.0 and by["llama-tiny"]["compiled_vs_llama@16"] == 1.0
    assert "compile_error@16" not in by["llama-tiny"] and "compiled_tok_s@16" in md
    assert "compiled_tok_s@T" in data["meta"]["throughput"]
    assert "graphed_tok_s@16" not in by["llama-tiny"]


def test_lm_reports_graphed_throughput_beside_compiled(tmp_path, small_corpus, monkeypatch):
    """``graphed=True``: ``graphed_tok_s@T`` and ``graphed_vs_llama@T`` from the compiled step replayed from a CUDA
    graph; a step that was not recorded (it ran eagerly) is no graphed measurement: None and its reason. Stubbed as
    above (the recording is tests/train/test_graph_step.py's business, on the GPU)."""
    data_path, cache = small_corpus

    def fake_throughput(config, seq_len, tokens, device, compiled=False, graphed=False):
        cheems = "cdmoe" in config.ffn_types
        result = {"tokens_per_s": (300.0 if cheems else 200.0) if graphed else 100.0, "peak_memory_gb": 1.0,
                  "error": None}
        if graphed:
            assert compiled
            result.update(graphed=not cheems or seq_len == 16, graph_error=None if seq_len == 16 else "no: sync")
        return result

    monkeypatch.setattr(lm, "training_throughput", fake_throughput)
    lm.run(tmp_path, quick=True, steps=2, families=("cheems", "llama"), contexts=(40,), size="tiny",
           vocab_size=300, seq_len=16, batch=2, data=data_path, cache_dir=cache, eval_tokens=256,
           throughput_lengths=(16, 32), compiled=True, graphed=True)
    data, md = _read(tmp_path)
    by = {r["preset"]: r for r in data["rows"]}
    assert by["cheems-tiny"]["graphed_tok_s@16"] == 300.0 and by["cheems-tiny"]["graphed_vs_llama@16"] == 1.5
    assert by["cheems-tiny"]["graphed_tok_s@32"] is None and by["cheems-tiny"]["graphed_vs_llama@32"] is None
    assert by["cheems-tiny"]["graph_error@32"] == "no: sync" and "graph_error@16" not in by["cheems-tiny"]
    assert by["llama-tiny"]["graphed_vs_llama@32"] == 1.0 and by["cheems-tiny"]["compiled_vs_llama@16"] == 1.0
    assert "graphed_tok_s@16" in md and "graphed_tok_s@T" in data["meta"]["throughput"]
