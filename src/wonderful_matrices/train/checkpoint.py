"""Crash-safe checkpoints of a training run.

A checkpoint is a folder ``<run>/checkpoint-<step>`` holding the model in HF format (``config.json`` +
safetensors weights, loadable by ``from_pretrained``), the tokenizer (``AutoTokenizer.from_pretrained`` and
``pipeline`` work on the folder alone, wherever it is moved), ``trainer_state.pt`` (optimizer, scheduler and RNG
tensors; only tensors, numbers and strings, read back with ``torch.load(weights_only=True)``) and, written
last, ``checkpoint.json``: the step, run facts and the size and SHA-256 of every file.

Saving first deletes old checkpoints down to the newest ``keep_last - 1`` (at least one), never the newest one known
to be complete (verified, or written by this process): so there is always a complete checkpoint to return to, also
when a newer one is damaged, and disk space is freed before it is needed. It then writes everything into a hidden
temp folder, fsyncs it, then renames it to ``checkpoint-<step>`` in one atomic step, then atomically rewrites
the ``latest`` pointer file and deletes checkpoints beyond the newest ``keep_last``. A process killed at any
moment leaves complete checkpoints only, plus at most a temp folder that is ignored and removed by the next
save; a save that fails (a full disk) removes its temp folder before raising. Loading takes the
newest checkpoint whose manifest matches its files; a damaged one is reported and skipped.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch

from ..atomic import atomic_write_text
from ..errors import UserError

MANIFEST = "checkpoint.json"
TRAINER_STATE = "trainer_state.pt"
LATEST = "latest"
_NAME = re.compile(r"^checkpoint-(\d+)$")
# Checkpoint folders this process verified or wrote (resolved paths): pruning never deletes the newest of them.
_KNOWN_COMPLETE: set[Path] = set()


class CorruptCheckpoint(Exception):
    """A checkpoint folder whose files do not match its manifest (or that has none)."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every ``checkpoint-<step>`` folder in ``run_dir``, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return sorted(found)


def verify_checkpoint(folder: Path) -> dict:
    """The manifest of ``folder`` after checking every file's size and hash; raises ``CorruptCheckpoint``."""
    try:
        manifest = _verified_manifest(folder)
    except CorruptCheckpoint:
        _KNOWN_COMPLETE.discard(folder.resolve())  # damaged since this process wrote or verified it
        raise
    _KNOWN_COMPLETE.add(folder.resolve())
    return manifest


def _verified_manifest(folder: Path) -> dict:
    manifest_path = folder / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except FileNotFoundError:
        raise CorruptCheckpoint(f"{folder} has no {MANIFEST} (incomplete save)") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CorruptCheckpoint(f"{folder}/{MANIFEST} is unreadable ({type(e).__name__})") from None
    for name, facts in files.items():
        path = folder / name
        if not path.is_file():
            raise CorruptCheckpoint(f"{folder} lacks {name}")
        if path.stat().st_size != facts["size"] or _sha256(path) != facts["sha256"]:
            raise CorruptCheckpoint(f"{folder}/{name} does not match its recorded size/hash (damaged file)")
    return manifest


def save_checkpoint(run_dir: str | os.PathLike, step: int, model, model_state: dict, trainer_state: dict,
                    meta: dict, keep_last: int = 2, tokenizer=None) -> Path:
    """Write ``checkpoint-<step>`` atomically and prune old ones; returns its folder.

    ``model`` is the HF model (for ``save_pretrained``), ``model_state`` its full state dict,
    ``trainer_state`` tensors/numbers to ``torch.save``, ``meta`` JSON facts stored in the manifest,
    ``tokenizer`` (optional) an HF tokenizer saved beside the model.
    An existing complete checkpoint of the same step is kept as is (a resumed run reaches the same state).
    """
    if keep_last < 1:
        raise UserError(f"--keep-last: got {keep_last}, expected an integer >= 1")
    run_dir = Path(run_dir)
    final = run_dir / f"checkpoint-{step}"
    for leftover in run_dir.glob(".tmp-checkpoint-*"):
        shutil.rmtree(leftover, ignore_errors=True)  # left by a killed save
    for leftover in run_dir.glob(f".{LATEST}.*.tmp"):
        leftover.unlink(missing_ok=True)  # left by a save killed while it rewrote the latest pointer
    if final.exists():
        try:
            verify_checkpoint(final)
            _point_latest_and_prune(run_dir, final, keep_last)
            return final
        except CorruptCheckpoint:
            _discard(final)
    existing = list_checkpoints(run_dir)
    complete = [folder for _, folder in existing if folder.resolve() in _KNOWN_COMPLETE]
    for _, old in existing[:-max(keep_last - 1, 1)]:
        if not complete or old != complete[-1]:
            _discard(old)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-checkpoint-{step}-", dir=run_dir))
    try:
        model.save_pretrained(tmp, state_dict=model_state)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        torch.save(trainer_state, tmp / TRAINER_STATE)
        files = {p.relative_to(tmp).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
                 for p in sorted(tmp.rglob("*")) if p.is_file()}
        (tmp / MANIFEST).write_text(json.dumps({"step": step, "files": files, "meta": meta}, indent=1))
        _fsync_tree(tmp)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _KNOWN_COMPLETE.add(final.resolve())
    _fsync_dir(run_dir)
    _point_latest_and_prune(run_dir, final, keep_last)
    return final


def _discard(folder: Path) -> None:
    _KNOWN_COMPLETE.discard(folder.resolve())
    trash = folder.with_name(f".tmp-checkpoint-trash-{folder.name}-{os.getpid()}")
    os.rename(folder, trash)  # atomic: the checkpoint name disappears at once
    shutil.rmtree(trash, ignore_errors=True)


def _point_latest_and_prune(run_dir: Path, newest: Path, keep_last: int) -> None:
    atomic_write_text(run_dir / LATEST, newest.name + "\n")
    for _, old in list_checkpoints(run_dir)[:-keep_last]:
        if old != newest:
            _discard(old)


def latest_checkpoint(run_dir: str | os.PathLike, warn: Callable[[str], None] = print) -> Path | None:
    """The newest complete checkpoint of ``run_dir``; ``None`` when it has none.

    Damaged checkpoints are reported through ``warn`` and skipped; when checkpoints exist but every one
    is damaged, raises ``UserError``.
    """
    found = list_checkpoints(run_dir)
    problems = []
    for _, folder in reversed(found):
        try:
            verify_checkpoint(folder)
            return folder
        except CorruptCheckpoint as e:
            problems.append(str(e))
            warn(f"warning: skipping corrupted checkpoint: {e}")
    if problems:
        raise UserError(f"no loadable checkpoint in {run_dir}: {problems[0]}; delete the damaged checkpoint "
                        "folders to start over")
    return None


def load_trainer_state(folder: Path) -> dict:
    """``trainer_state.pt`` of a verified checkpoint (tensors only; no pickle of arbitrary objects).

    Raises ``UserError`` when the file holds anything else (``torch.load(weights_only=True)`` refuses it).
    """
    try:
        return torch.load(folder / TRAINER_STATE, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(f"{folder / TRAINER_STATE} holds objects other than tensors, numbers and strings "
                        f"({str(e).splitlines()[0][:120]}); refusing to unpickle it: resume from another "
                        "checkpoint or pass another --out") from None
    except (RuntimeError, OSError, EOFError) as e:  # unreadable although its manifest matched (written damaged)
        raise UserError(f"cannot read {folder / TRAINER_STATE} ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                        "resume from another checkpoint or pass another --out") from None


def load_model(folder: Path, device: torch.device | str = "cpu"):
    """The HF causal LM saved in ``folder`` (float32), on ``device``."""
    from transformers import AutoModelForCausalLM

    import wonderful_matrices.models  # noqa: F401  (registers our model classes with the Auto API)

    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    except Exception as e:  # noqa: BLE001 - whatever transformers raises for a damaged folder, the fix is the same
        raise UserError(f"cannot load the model in {folder} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                        "the checkpoint may be damaged or from another version") from None
    return model.to(device)
