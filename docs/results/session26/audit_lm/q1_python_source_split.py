"""Q1: the python-source train/validation split.

(a) this interpreter's full corpus: the two splits share no file (content hash), and how many validation files
    are near-duplicates of a training file (the same text up to whitespace, or the same path tail and >= 90% the same
    lines) -- leakage that exact-content deduplication does not remove;
(b) machine independence: 300 files copied under two different folder names, walked from each copy -> the same
    content_sha256, the same split, the same document order;
(c) a tokenizer trained on one copy, saved, carried (copied to another folder) and loaded: the two copies tokenize
    the validation split to identical token files (what a fresh GPU machine does with the carried tokenizer).
Usage: PYTHONPATH=src python q1_python_source_split.py
"""
import difflib
import hashlib
import re
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from wonderful_matrices.data.packing import tokenize_split
from wonderful_matrices.data.python_source import python_source_corpus
from wonderful_matrices.data.tokenizer import load_tokenizer, train_bpe


def squeeze(text: bytes) -> str:
    return hashlib.sha256(re.sub(rb"\s+", b"", text)).hexdigest()


def main() -> int:
    t0 = time.time()
    corpus = python_source_corpus()
    train, val = corpus.train.files, corpus.validation.files
    m = corpus.manifest
    print(f"(a) {m['files']} unique files, {m['bytes'] / 1e6:.0f} MB; train {len(train)}, validation {len(val)} "
          f"({m['validation_bytes'] / m['bytes']:.2%} of the bytes); scanned in {time.time() - t0:.0f} s")
    assert not {f.sha256 for f in train} & {f.sha256 for f in val}, "a file in both splits"
    train_squeezed = {squeeze(f.path.read_bytes()) for f in train}
    same_up_to_space = [f for f in val if squeeze(f.path.read_bytes()) in train_squeezed]
    by_tail = defaultdict(list)
    for f in train:
        by_tail["/".join(f.relative.split("/")[-2:])].append(f)
    near = []
    for f in val:
        mine = f.path.read_text().splitlines()
        for other in by_tail.get("/".join(f.relative.split("/")[-2:]), []):
            theirs = other.path.read_text().splitlines()
            if len(mine) > 5 and difflib.SequenceMatcher(None, mine, theirs, autojunk=False).quick_ratio() >= 0.9 \
                    and difflib.SequenceMatcher(None, mine, theirs, autojunk=False).ratio() >= 0.9:
                near.append((f, other))
                break
    near_bytes = sum(f.size for f, _ in near)
    print(f"    no file in both splits; {len(same_up_to_space)} validation files equal a training file up to "
          f"whitespace; {len(near)} validation files ({near_bytes / m['validation_bytes']:.1%} of the validation "
          f"bytes) are >= 90% the same lines as a training file of the same path tail, e.g.:")
    for f, other in near[:5]:
        print(f"      {f.relative}  ~  {other.relative}")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = [f for f in train[:250] + val[:50]]
        for name in ("machine_a/lib", "elsewhere/b/site"):
            for i, f in enumerate(source):
                dest = tmp / name / f"pkg{i % 7}" / f.path.name
                dest = dest.with_name(f"{i}_{dest.name}")
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f.path, dest)
        a = python_source_corpus(roots=[tmp / "machine_a/lib"])
        b = python_source_corpus(roots=[tmp / "elsewhere/b/site"])
        same = (a.manifest["content_sha256"] == b.manifest["content_sha256"]
                and [f.sha256 for f in a.validation.files] == [f.sha256 for f in b.validation.files]
                and [f.sha256 for f in a.train.files] == [f.sha256 for f in b.train.files])
        print(f"(b) two copies under other folders: content_sha256 {a.manifest['content_sha256'][:12]} / "
              f"{b.manifest['content_sha256'][:12]}, same split and order: {same}")
        tok = train_bpe(a.split("train"), 600, tmp / "tok")
        shutil.copytree(tmp / "tok", tmp / "carried")
        ta = np.asarray(tokenize_split(a, "validation", tok, tmp / "cache_a"))
        tb = np.asarray(tokenize_split(b, "validation", load_tokenizer(tmp / "carried"), tmp / "cache_b"))
        print(f"(c) carried tokenizer: validation tokens {len(ta)} / {len(tb)}, identical: {np.array_equal(ta, tb)}")
        same = same and np.array_equal(ta, tb)
    return int(not same)


if __name__ == "__main__":
    sys.exit(main())
