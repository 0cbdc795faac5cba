"""``wm train --data python-source:DIR``: documents packed with restarting positions, the corpus manifest recorded
in summary.json and in the checkpoint, and evaluation that scores each document alone."""
import json

import pytest
from wm_train_helpers import TINY_PRESET, one_thread, python_source_root, train_argv

from wonderful_matrices.cli import main
from wonderful_matrices.train import checkpoint as ckpt

_one_thread = pytest.fixture(scope="module", autouse=True)(one_thread)


def test_training_on_python_source_records_the_manifest(tmp_path, capsys):
    root = python_source_root(tmp_path)
    out = tmp_path / "run"
    argv = train_argv(TINY_PRESET, f"python-source:{root}", out, max_steps=4, validation_fraction=0.2)
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    manifest = summary["corpus_manifest"]
    assert manifest["files"] == 80 and manifest["train_files"] + manifest["validation_files"] == 80
    assert manifest["train_tokens"] > 0 and manifest["validation_tokens"] > 0
    assert len(manifest["content_sha256"]) == 64
    meta = json.loads((ckpt.latest_checkpoint(out) / ckpt.MANIFEST).read_text())["meta"]
    assert meta["corpus_manifest"] == manifest
    assert summary["validation"]["loss"] > 0

    assert main(["eval", str(out), "--device", "cpu", "--max-rows", "8", "--batch-size", "4"]) == 0
    evaluated = json.loads((out / "eval.json").read_text())
    # `wm eval` scores the same documents the same way as the run's last evaluation (8 rows, EOS-separated)
    assert evaluated["tokens"] == summary["validation"]["tokens"]
    assert abs(evaluated["loss"] - summary["validation"]["loss"]) < 1e-5 * summary["validation"]["loss"]
    assert evaluated["tokens"] < 8 * 31  # a document's first token after an EOS is not scored
