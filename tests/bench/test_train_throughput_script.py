"""scripts/train_throughput.py: variant parsing, its errors, and a CPU run that writes a row per variant."""
import json
import sys

import pytest

from conftest import load_script


def load():
    return load_script("train_throughput")


def test_variants_parse_overrides_with_their_types():
    script = load()
    assert script.parse_variant("llama-tiny") == ("llama-tiny", {})
    assert script.parse_variant("cheems-tiny:cdmoe_backend=dense,ssd_chunk_size=8,dma_qk_norm=true,"
                                "keep_window=none,rope_theta=5e3") == (
        "cheems-tiny", {"cdmoe_backend": "dense", "ssd_chunk_size": 8, "dma_qk_norm": True, "keep_window": None,
                        "rope_theta": 5000.0})


@pytest.mark.parametrize("spec,named", [("gpt-tiny", "preset 'gpt-tiny'"), ("cheems-tiny:dense", "override 'dense'"),
                                        ("cheems-tiny:=3", "override '=3'")])
def test_bad_variants_are_refused_by_name(spec, named):
    with pytest.raises(ValueError, match=named):
        load().parse_variant(spec)


def test_cpu_run_writes_a_row_per_variant_against_the_first(tmp_path, monkeypatch):
    script = load()
    monkeypatch.setattr(sys, "argv", ["train_throughput.py", "--variants", "llama-tiny",
                                      "cheems-tiny:cdmoe_backend=dense", "cheems-tiny:num_hidden_layers=0",
                                      "--seq-len", "16", "--tokens", "32", "--steps", "1", "--device", "cpu",
                                      "--out", str(tmp_path)])
    script.main()
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["llama-tiny", "cheems-tiny:cdmoe_backend=dense",
                                            "cheems-tiny:num_hidden_layers=0"]
    assert rows[0]["vs_first"] == 1.0 and rows[1]["tokens_per_s"] > 0 and rows[1]["error"] is None
    assert rows[2]["tokens_per_s"] is None and "num_hidden_layers" in rows[2]["error"]  # a refused config is a row



@pytest.mark.parametrize("flags,modes", [([], [False]), (["--compiled"], [False, True]),
                                         (["--compiled-only"], [True])])
def test_modes_eager_compiled_or_compiled_only(tmp_path, monkeypatch, flags, modes):
    script = load()
    seen = []
    monkeypatch.setattr(script, "training_throughput",
                        lambda *args, compiled, **kwargs: seen.append(compiled) or {"tokens_per_s": 1.0})
    monkeypatch.setattr(sys, "argv", ["train_throughput.py", "--variants", "llama-tiny", "--device", "cpu",
                                      "--out", str(tmp_path), *flags])
    script.main()
    assert seen == modes
    assert [r["compiled"] for r in json.loads((tmp_path / "results.json").read_text())["rows"]] == modes


def test_graphed_flag_reaches_every_row_and_its_columns(tmp_path, monkeypatch):
    script = load()
    seen = []
    monkeypatch.setattr(script, "training_throughput", lambda *args, **kwargs: seen.append(kwargs.get("graphed")) or {
        "tokens_per_s": 1.0, "graphed": True, "graph_error": None})
    monkeypatch.setattr(sys, "argv", ["train_throughput.py", "--variants", "llama-tiny", "--device", "cpu",
                                      "--compiled", "--graphed", "--out", str(tmp_path)])
    script.main()
    assert seen == [True, True]
    assert "| variant | compiled | graphed | seq_len |" in (tmp_path / "results.md").read_text()

