"""Shared set-up for the training tests: the smallest preset and a small corpus file."""
from __future__ import annotations

import os
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


TINY_PRESET = "cheems-tiny"
TINY_VOCAB = 512


def corpus_file(folder: Path) -> str:
    """A ~40 KB slice of the embedded Shakespeare corpus as a text file."""
    from wonderful_matrices.data.corpora import shakespeare_documents

    path = folder / "corpus.txt"
    path.write_text(shakespeare_documents()[0][:40_000])
    return str(path)


def python_source_root(folder: Path) -> Path:
    """A folder of 80 small, distinct Python modules (``--data python-source:DIR``; many documents per 32-token row)."""
    root = folder / "src"
    root.mkdir()
    for i in range(80):
        (root / f"mod{i:02d}.py").write_text(f"def f{i}(x, y={i}):\n    return (x + y) * {i % 7}\n\n\n"
                                            f"CONSTANT_{i} = f{i}({i})\n")
    return root


def train_argv(preset: str, data: str, out: Path, max_steps: int = 8, **flags) -> list[str]:
    """``wm train`` arguments for a tiny run; ``flags`` override defaults (``save_interval=4`` ->
    ``--save-interval 4``)."""
    options = {"batch_size": 4, "seq_len": 32, "lr": 3e-3, "eval_interval": 4, "eval_rows": 8, "save_interval": 4,
               "log_interval": 2, "warmup": 0.25, "device": "cpu", **flags}
    argv = ["train", "--preset", preset, "--data", data, "--out", str(out), "--max-steps", str(max_steps),
            "--no-progress"]
    for key, value in options.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


def subprocess_env() -> dict:
    """Environment for child processes: this checkout's sources first, one thread each."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


PYTHON = sys.executable


def one_thread():
    """Generator for an autouse fixture: tiny models run fastest (and steadiest on a busy machine) on one thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_preset_without_balance_loss(folder: Path) -> str:
    """``TINY_PRESET`` with the experts' load-balancing loss off, saved in ``folder`` (a ``--preset`` path).

    The balancing loss of a batch is not the mean of its halves' losses, so only without it do two ranks
    with batch b follow exactly the same trajectory as one process with batch 2b.
    """
    from wonderful_matrices.models import presets

    config = presets.get(TINY_PRESET)
    config.balance_loss_weight = 0.0
    config.save_pretrained(folder)
    return str(folder)
