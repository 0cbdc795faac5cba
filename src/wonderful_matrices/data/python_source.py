"""The ``python-source`` corpus: the ``.py`` files of the interpreter's standard library and installed packages.

Every machine that runs this library carries tens to hundreds of MB of Python source, which makes it a corpus
large enough to compare 100M-parameter models without a download. The corpus is built by streaming:

* files: every ``*.py`` under the roots (default: ``sysconfig``'s ``stdlib``, ``purelib`` and ``platlib`` paths,
  each once), walked in sorted order of (root, relative path); files that are not UTF-8 or hold only whitespace
  are skipped;
* deduplication by content: a file whose SHA-256 was already seen is skipped (the first path in walk order is
  the one listed), so copies vendored by several packages count once;
* order: the unique files sorted by their content's SHA-256 — the same set of files gives the same corpus on
  any machine, wherever it is installed — each file one document;
* split: a file goes to validation when the first 8 bytes of its content SHA-256, read as a fraction of 2⁶⁴, are
  below ``validation_fraction``; so a file's split never depends on the other files;
* memory: one pass hashes the files and keeps only (path, hash, size) per file; the splits re-read the files
  each time they are iterated, so no text is held beyond the file being read.

:func:`python_source_corpus` returns a :class:`~wonderful_matrices.data.corpora.Corpus` whose ``manifest``
(files, bytes, split sizes, SHA-256 of the file list and of the contents, the roots) identifies the corpus: two
runs whose ``content_sha256`` agree trained on the same text.
"""
from __future__ import annotations

import hashlib
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

NAME = "python-source"


@dataclass(frozen=True)
class SourceFile:
    """One unique file: where it was read, the SHA-256 of its bytes, their count."""

    path: Path
    relative: str
    sha256: str
    size: int


def default_roots() -> list[Path]:
    """The standard library and the installed packages' folders of this interpreter, each once, in that order."""
    roots = []
    for key in ("stdlib", "purelib", "platlib"):
        path = sysconfig.get_paths().get(key)
        if path and Path(path).is_dir() and Path(path).resolve() not in roots:
            roots.append(Path(path).resolve())
    return roots


def _text(data: bytes) -> str | None:
    """The file's text, or None when it is not UTF-8 or holds only whitespace."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if text.strip() else None


def scan(roots: list[Path], max_files: int | None = None) -> list[SourceFile]:
    """The unique files under ``roots`` sorted by content hash (see the module docstring); at most
    ``max_files`` of them (the first ones in walk order), for quick tests."""
    seen: set[str] = set()
    files = []
    for index, root in enumerate(roots):
        for path in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix()):
            if max_files is not None and len(files) >= max_files:
                break
            if not path.is_file():
                continue
            try:
                data = path.read_bytes()
            except OSError:
                continue
            if _text(data) is None:
                continue
            digest = hashlib.sha256(data).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            files.append(SourceFile(path, f"{index}/{path.relative_to(root).as_posix()}", digest, len(data)))
    return sorted(files, key=lambda f: f.sha256)


def in_validation(sha256: str, validation_fraction: float) -> bool:
    """Whether the file with this content hash belongs to the validation split."""
    return int(sha256[:16], 16) < validation_fraction * (1 << 64)


class SourceDocuments:
    """A re-iterable split: each iteration reads the listed files again, one document each."""

    def __init__(self, files: list[SourceFile]):
        self.files = files

    def __iter__(self):
        for f in self.files:
            try:
                text = _text(f.path.read_bytes())
            except OSError:
                text = None
            if text is None:
                raise UserError(f"{f.path} changed or vanished while the python-source corpus was read; re-run")
            yield text

    def __len__(self) -> int:
        return len(self.files)


def manifest(files: list[SourceFile], train: list[SourceFile], validation: list[SourceFile],
             roots: list[Path]) -> dict:
    """The corpus' identity: counts, bytes, ``list_sha256`` over (relative path, content hash) in corpus order and
    ``content_sha256`` over the content hashes alone (independent of where the files are installed)."""
    listing, content = hashlib.sha256(), hashlib.sha256()
    for f in files:
        listing.update(f"{f.relative}\0{f.sha256}\n".encode())
        content.update(f"{f.sha256}\n".encode())
    return {"name": NAME, "files": len(files), "bytes": sum(f.size for f in files),
            "train_files": len(train), "train_bytes": sum(f.size for f in train),
            "validation_files": len(validation), "validation_bytes": sum(f.size for f in validation),
            "list_sha256": listing.hexdigest(), "content_sha256": content.hexdigest(),
            "roots": [str(r) for r in roots], "python": sys.version.split()[0]}


def python_source_corpus(validation_fraction: float = 0.05, roots: list[str | Path] | None = None,
                         max_files: int | None = None):
    """The python-source corpus (see the module docstring) as a ``Corpus`` with lazily read splits.

    ``roots``: folders to read instead of this interpreter's library folders; ``max_files``: keep only that many
    unique files (both for tests). Raises ``UserError`` when a root is missing or a split would be empty.
    """
    from .corpora import Corpus

    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction: got {validation_fraction}, expected a number in (0, 1)")
    paths = [Path(r).expanduser().resolve() for r in roots] if roots is not None else default_roots()
    for root in paths:
        if not root.is_dir():
            raise UserError(f"python-source root {root} is not a folder; give an existing folder of .py files")
    files = scan(paths, max_files)
    validation = [f for f in files if in_validation(f.sha256, validation_fraction)]
    train = [f for f in files if not in_validation(f.sha256, validation_fraction)]
    if not train or not validation:
        raise UserError(f"python-source under {', '.join(map(str, paths))} has {len(files)} unique .py files, too "
                        "few to fill both a training and a validation split; give more files")
    facts = manifest(files, train, validation, paths)
    name = NAME if roots is None else f"{NAME}:{','.join(map(str, paths))}"
    return Corpus(name, SourceDocuments(train), SourceDocuments(validation),
                  fingerprint=facts["content_sha256"][:16], manifest=facts)
