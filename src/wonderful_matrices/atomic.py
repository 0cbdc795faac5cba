"""Files written whole or not at all: through a temp file beside the target, fsync, then a rename.

A reader (or a crash) never sees half a file, and a failed write leaves the old file and no temp file behind; a
killed process (no Python cleanup runs) leaves its temp file, which :func:`sweep_stale_temps` removes later.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import IO, Iterator


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """``with atomic_file(path, "wb") as f: ...``: ``f`` is a temp file beside ``path`` (parents are created),
    renamed onto ``path`` after an fsync when the block ends normally, removed when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_file`)."""
    with atomic_file(path) as f:
        f.write(text)


def sweep_stale_temps(path: str | os.PathLike, older_than_s: float = 600.0) -> list[Path]:
    """Remove the temp files :func:`atomic_file` left beside ``path`` when a process writing it was killed — those
    not modified for ``older_than_s`` seconds, so that a writer still at work (it writes as it goes) keeps its own.
    Returns the removed paths."""
    path = Path(path)
    removed = []
    for leftover in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(FileNotFoundError):  # another process swept it first
            if time.time() - leftover.stat().st_mtime > older_than_s:
                leftover.unlink()
                removed.append(leftover)
    return removed
