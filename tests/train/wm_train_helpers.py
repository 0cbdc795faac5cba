"""Shared set-up for the training tests: a tiny model preset on disk and a small corpus file."""
from __future__ import annotations

import os
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def tiny_preset(folder: Path) -> str:
    """Write the config of a tiny causal LM into ``folder`` and return it (usable as ``--preset``)."""
    from transformers import LlamaConfig

    config = LlamaConfig(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=True)
    config.save_pretrained(folder)
    return str(folder)


def corpus_file(folder: Path) -> str:
    """A ~40 KB slice of the embedded Shakespeare corpus as a text file."""
    from wonderful_matrices.data.corpora import shakespeare_documents

    path = folder / "corpus.txt"
    path.write_text(shakespeare_documents()[0][:40_000])
    return str(path)


def train_argv(preset: str, data: str, out: Path, max_steps: int = 8, **flags) -> list[str]:
    """``wm train`` arguments for a tiny run; ``flags`` override defaults (``save_interval=4`` -> ``--save-interval 4``)."""
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
