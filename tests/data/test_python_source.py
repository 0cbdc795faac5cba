"""The python-source corpus: deduplicated .py files, hash order, hash split, manifest; and packed-row positions."""
import hashlib

import pytest
import torch

from wonderful_matrices.data.corpora import load_corpus
from wonderful_matrices.data.packing import document_position_ids
from wonderful_matrices.data.python_source import default_roots, in_validation, python_source_corpus
from wonderful_matrices.data.tokenizer import train_bpe
from wonderful_matrices.errors import UserError


def _write_roots(tmp_path, count=60):
    """Two roots: distinct modules, a file copied into both roots, a non-UTF-8 file, a blank file, a non-.py file."""
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        (root / "pkg").mkdir(parents=True)
    texts = {}
    for i in range(count):
        text = f"def f{i}(x):\n    return x * {i} + {i * i}\n"
        path = (a if i % 2 else b) / "pkg" / f"m{i:03d}.py"
        path.write_text(text)
        texts[path] = text
    (a / "pkg" / "shared.py").write_text("SHARED = 1\n")
    (b / "pkg" / "copy_of_shared.py").write_text("SHARED = 1\n")
    (a / "latin1.py").write_bytes("x = 'caf\xe9'\n".encode("latin-1"))
    (a / "blank.py").write_text("  \n\n")
    (a / "notes.txt").write_text("not python\n")
    return a, b, texts


def test_files_are_deduplicated_hash_ordered_and_split_by_hash(tmp_path):
    a, b, texts = _write_roots(tmp_path)
    corpus = python_source_corpus(0.25, roots=[a, b])
    train, validation = list(corpus.train), list(corpus.validation)
    everything = train + validation
    assert len(everything) == len(texts) + 1  # every module once, the shared file once, skipped files never
    assert everything.count("SHARED = 1\n") == 1
    assert all("caf" not in t and t.strip() for t in everything)
    digests = [hashlib.sha256(t.encode()).hexdigest() for t in everything]
    assert [d for d in digests if not in_validation(d, 0.25)] == sorted(digests[:len(train)])
    assert all(in_validation(d, 0.25) for d in digests[len(train):])
    assert list(corpus.train) == train  # a split can be read again, the same

    m = corpus.manifest
    assert m["files"] == len(everything) and m["train_files"] == len(train)
    assert m["bytes"] == sum(len(t.encode()) for t in everything)
    assert m["validation_bytes"] == sum(len(t.encode()) for t in validation)
    assert corpus.fingerprint == m["content_sha256"][:16]

    # the same files elsewhere (other folder names, roots swapped) are the same corpus by content
    moved = tmp_path / "moved"
    a.rename(moved)
    again = python_source_corpus(0.25, roots=[b, moved])
    assert again.manifest["content_sha256"] == m["content_sha256"]
    assert list(again.train) == train


def test_max_files_load_corpus_spec_and_errors(tmp_path):
    a, b, _ = _write_roots(tmp_path)
    assert python_source_corpus(0.5, roots=[a, b], max_files=10).manifest["files"] == 10
    corpus = load_corpus(f"python-source:{a},{b}", validation_fraction=0.25)
    assert corpus.name.startswith("python-source:") and corpus.manifest["files"] == 61
    with pytest.raises(UserError, match="not a folder"):
        python_source_corpus(0.1, roots=[tmp_path / "missing"])
    with pytest.raises(UserError, match="too few"):
        python_source_corpus(0.1, roots=[a], max_files=1)


def test_bpe_trains_on_the_corpus(tmp_path):
    a, b, _ = _write_roots(tmp_path)
    corpus = python_source_corpus(0.25, roots=[a, b])
    tokenizer = train_bpe(corpus.train, 300, tmp_path / "tok")
    ids = tokenizer("def f1(x):\n    return x\n")["input_ids"]
    assert tokenizer.decode(ids) == "def f1(x):\n    return x\n"


def test_this_interpreter_has_python_source():
    roots = default_roots()
    assert roots, "sysconfig names no library folder"
    corpus = python_source_corpus(0.5, max_files=40)
    assert corpus.manifest["files"] == 40 and corpus.manifest["bytes"] > 0
    assert corpus.manifest["roots"] == [str(r) for r in roots]


def test_document_position_ids_restart_after_each_eos():
    eos = 9
    rows = torch.tensor([[4, 5, 9, 6, 9, 9, 7, 8],
                         [1, 2, 3, 4, 5, 6, 7, 8]])
    assert document_position_ids(rows, eos).tolist() == [[0, 1, 2, 0, 1, 0, 0, 1],
                                                         [0, 1, 2, 3, 4, 5, 6, 7]]


@pytest.mark.parametrize("venv", [True, False])
def test_default_corpus_skips_the_standard_librarys_package_folders(tmp_path, monkeypatch, venv):
    """In a virtual environment the standard library's site-packages holds the base interpreter's packages (another
    version of what the environment installs: near-duplicates across the split); without one it is purelib, read
    once through that root."""
    import sysconfig

    stdlib = tmp_path / "lib" / "python3"
    purelib = tmp_path / "venv" / "site-packages" if venv else stdlib / "site-packages"
    for i in range(40):
        (stdlib / f"std{i}.py").parent.mkdir(parents=True, exist_ok=True)
        (stdlib / f"std{i}.py").write_text(f"STD = {i}\n")
        (purelib / "pkg").mkdir(parents=True, exist_ok=True)
        (purelib / "pkg" / f"m{i}.py").write_text(f"VERSION = 2\nX = {i}\n")
    if venv:  # the base interpreter's older version of the package
        for i in range(40):
            (stdlib / "site-packages" / "pkg").mkdir(parents=True, exist_ok=True)
            (stdlib / "site-packages" / "pkg" / f"m{i}.py").write_text(f"VERSION = 1\nX = {i}\n")
    paths = {"stdlib": str(stdlib), "purelib": str(purelib), "platlib": str(purelib)}
    monkeypatch.setattr(sysconfig, "get_paths", lambda: paths)
    corpus = python_source_corpus(0.25)
    texts = list(corpus.train) + list(corpus.validation)
    assert len(texts) == 80 and not any("VERSION = 1" in t for t in texts)
    assert corpus.manifest["skipped"] == [str(stdlib.resolve() / name) for name in ("site-packages", "dist-packages")]
    # explicit roots are read whole: the standard library and the package folder inside it
    assert python_source_corpus(0.25, roots=[stdlib]).manifest["files"] == 80
