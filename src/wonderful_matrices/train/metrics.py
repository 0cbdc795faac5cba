"""What a training run reports: messages, ``metrics.jsonl``, TensorBoard scalars and the ``loss.png`` plot.

``metrics.jsonl`` holds one JSON record per line, ``{"kind": "train" | "eval", "step": N, ...values}``. A
resumed run first drops the records past the checkpoint it resumes from, so the file always tells one
trajectory. Reading skips lines that are not JSON (a line cut short by a killed process, or damaged bytes).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..atomic import atomic_file, atomic_write_text


class MetricsLog:
    """Rank-0 output of a run in ``run_dir``: messages on stderr, ``metrics.jsonl`` and TensorBoard (when
    ``tensorboard`` is installed). On other ranks (``is_main`` False) every method does nothing."""

    def __init__(self, run_dir: Path, is_main: bool, resume_step: int):
        self.main = is_main
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if not self.main:
            return
        if self.path.exists():
            kept = [json.dumps(r) for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step + 1)
        except ImportError:
            self.tb = None

    def say(self, message: str) -> None:
        """Print ``message`` on stderr (without breaking a progress bar)."""
        if self.main:
            from tqdm import tqdm

            tqdm.write(message, file=sys.stderr)

    def record(self, kind: str, step: int, **values) -> None:
        """Append ``{"kind", "step", **values}`` to ``metrics.jsonl``; numbers also go to TensorBoard."""
        if not self.main:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"kind": kind, "step": step, **values}) + "\n")
        if self.tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self.tb.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(path: Path) -> list[dict]:
    """The records of a ``metrics.jsonl``; lines that are not UTF-8 JSON objects are skipped."""
    records = []
    for line in path.read_bytes().splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # includes UnicodeDecodeError
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def plot_losses(run_dir: Path) -> Path | None:
    """Draw train and validation loss from ``metrics.jsonl`` into ``loss.png``; returns its path (None: no file)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return None
    records = read_metrics(path)
    train = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train" and "loss" in r]
    val = [(r["step"], r["loss"]) for r in records if r.get("kind") == "eval" and "loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train")
    if val:
        ax.plot(*zip(*val), "o-", label="validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(run_dir.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = run_dir / "loss.png"
    with atomic_file(out, "wb") as f:  # a run killed while plotting keeps its previous plot
        fig.savefig(f, dpi=120, format="png")
    plt.close(fig)
    return out
