"""scripts/gpu_flex_diag.py: its reduced CPU run (eager forwards, one line and one json record per check), the
gradient comparison of a check (against a differentiable stand-in, as FlexAttention has no CPU backward), errors
recorded without stopping, and the time budget."""
import json

import torch

import wonderful_matrices as wm
from conftest import load_script


def load():
    return load_script("gpu_flex_diag")


def test_reduced_cpu_run_writes_a_record_per_check(tmp_path, capsys):
    script = load()
    out = tmp_path / "diag.json"
    assert script.main(["--out", str(out), "--only", "float32 eager pad default",
                        "--only", "doc10 float32 eager pad ROWS"]) == 0
    report = json.loads(out.read_text())
    names = [r["name"] for r in report["checks"]]
    assert names == [f"{p} float32 eager pad default" for p in script.PIECES] + [
        "doc10 float32 eager pad ROWS_ONE_BY_ONE"]
    assert all(r["status"] == "ok" and r["out"] < 1e-5 for r in report["checks"])
    assert report["reduced"] and not any(report["switch_defaults"].values())
    printed = capsys.readouterr().out.splitlines()
    assert sum(line.startswith(tuple(names)) for line in printed) == len(names)
    assert printed[-2] == "failing: none"


def test_gradients_are_compared_per_piece_and_a_wrong_attention_is_bad(monkeypatch):
    script = load()
    inputs, seq_idx, weight = script.case("pad", torch.device("cpu"))
    ref = script.oracle(inputs, seq_idx, weight, grad=True)

    def stand_in(q, k, v, bias, scale, docs, compiled):
        return wm.ops.dynamic_mask_attention(q, k, v, bias, scale=scale, seq_idx=docs, backend="torch")

    monkeypatch.setattr(script.biased_causal, "dynamic_mask_attention_biased_causal", stand_in)
    for piece in ("packed-b2", "doc10", "row1-nodocs"):
        record = script.run_piece((piece, torch.float32, "compiled", "pad", "default"), inputs, seq_idx, weight,
                                  ref, grad=True)
        assert record["status"] == "ok" and max(record[g] for g in ("out", "q", "k", "v", "bias")) < 1e-5
        assert record["nan"] == {"out": 0, "q": 0, "k": 0, "v": 0, "bias": 0}

    def leaky(q, k, v, bias, scale, docs, compiled):  # ignores the documents
        return stand_in(q, k, v, bias, scale, None, compiled)

    monkeypatch.setattr(script.biased_causal, "dynamic_mask_attention_biased_causal", leaky)
    record = script.run_piece(("packed-b2", torch.float32, "compiled", "pad", "default"), inputs, seq_idx, weight,
                              ref, grad=True)
    assert record["status"] == "BAD" and record["out"] > 1e-2


def test_errors_are_recorded_and_the_budget_stops_new_checks(tmp_path, monkeypatch, capsys):
    script = load()

    def broken(*args, **kwargs):
        raise RuntimeError("no valid choices\nfor flex")

    monkeypatch.setattr(script.biased_causal, "dynamic_mask_attention_biased_causal", broken)
    out = tmp_path / "diag.json"
    script.main(["--out", str(out), "--only", "doc10 float32 eager nopad"])
    (record,) = json.loads(out.read_text())["checks"]
    assert record["status"] == "ERROR" and record["error"] == "RuntimeError: no valid choices for flex"
    assert "Traceback" in record["traceback"]
    assert "failing: doc10 float32 eager nopad default" in capsys.readouterr().out
    script.main(["--out", str(out), "--budget", "-1", "--only", "doc"])
    checks = json.loads(out.read_text())["checks"]
    assert checks and all(r["status"].startswith("skipped (budget") for r in checks)


def test_the_gpu_plan_names_each_check_once_and_starts_with_the_failing_case():
    script = load()
    names = [script.check_name(c) for c in script.plan(cuda=True)]
    assert len(names) == len(set(names))
    assert names[0] == "packed-b2 float32 compiled pad default"
    assert {"test-body float32", "test-body bfloat16"} <= set(names)
    assert {f"packed-b2 float32 compiled pad {s}" for s in script.SWITCHES} <= set(names)
