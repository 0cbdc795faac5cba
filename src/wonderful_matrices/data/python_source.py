"""The ``python-source`` corpus: the ``.py`` files of the interpreter's standard library and installed packages.

Every machine that runs this library carries tens to hundreds of MB of Python source, which makes it a corpus
large enough to compare 100M-parameter models without a download. The corpus is built by streaming:

* files: every ``*.py`` under the roots (default: ``sysconfig``'s ``stdlib``, ``purelib`` and ``platlib`` paths,
  each once), walked in sorted order of (root, relative path); files that are not UTF-8 or hold only whitespace
  are skipped. Of the default roots, the standard library's ``site-packages`` / ``dist-packages`` folders are not
  walked (:func:`default_skipped`): in a virtual environment they hold the base interpreter's packages, another
  environment's versions of the packages installed here (in session 26's virtual environment 9% of the validation
  bytes were >= 90% the same lines as a training file through them); where they are this interpreter's,
  ``purelib`` walks them;
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


def default_skipped() -> list[Path]:
    """The folders of the standard library that hold installed packages (``site-packages``, ``dist-packages``),
    which the default corpus does not read through the ``stdlib`` root (see the module docstring)."""
    stdlib = sysconfig.get_paths().get("stdlib")
    return [Path(stdlib).resolve() / name for name in ("site-packages", "dist-packages")] if stdlib else []


def _text(data: bytes) -> str | None:
    """The file's text, or None when it is not UTF-8 or holds only whitespace."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if text.strip() else None


def scan(roots: list[Path], max_files: int | None = None, skipped: list[Path] = ()) -> list[SourceFile]:
    """The unique files under ``roots`` sorted by content hash (see the module docstring); at most
    ``max_files`` of them (the first ones in walk order), for quick tests. Files under a folder of ``skipped``
    inside a root are not read through that root (a skipped folder that is a root itself is walked as that root)."""
    seen: set[str] = set()
    files = []
    for index, root in enumerate(roots):
        skip = [s for s in skipped if s != root and s.is_relative_to(root)]
        for path in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix()):
            if max_files is not None and len(files) >= max_files:
                break
            if not path.is_file() or any(path.is_relative_to(s) for s in skip):
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
             roots: list[Path], skipped: list[Path] = ()) -> dict:
    """The corpus' identity: counts, bytes, ``list_sha256`` over (relative path, content hash) in corpus order and
    ``content_sha256`` over the content hashes alone (independent of where the files are installed); the roots and
    the ``skipped`` folders."""
    listing, content = hashlib.sha256(), hashlib.sha256()
    for f in files:
        listing.update(f"{f.relative}\0{f.sha256}\n".encode())
        content.update(f"{f.sha256}\n".encode())
    return {"name": NAME, "files": len(files), "bytes": sum(f.size for f in files),
            "train_files": len(train), "train_bytes": sum(f.size for f in train),
            "validation_files": len(validation), "validation_bytes": sum(f.size for f in validation),
            "list_sha256": listing.hexdigest(), "content_sha256": content.hexdigest(),
            "roots": [str(r) for r in roots], "skipped": [str(p) for p in skipped], "python": sys.version.split()[0]}


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
    skipped = default_skipped() if roots is None else []
    files = scan(paths, max_files, skipped)
    validation = [f for f in files if in_validation(f.sha256, validation_fraction)]
    train = [f for f in files if not in_validation(f.sha256, validation_fraction)]
    if not train or not validation:
        raise UserError(f"python-source under {', '.join(map(str, paths))} has {len(files)} unique .py files, too "
                        "few to fill both a training and a validation split; give more files")
    facts = manifest(files, train, validation, paths, skipped)
    name = NAME if roots is None else f"{NAME}:{','.join(map(str, paths))}"
    return Corpus(name, SourceDocuments(train), SourceDocuments(validation),
                  fingerprint=facts["content_sha256"][:16], manifest=facts)
