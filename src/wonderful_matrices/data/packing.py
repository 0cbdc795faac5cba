"""Tokenize a corpus split once into a cached token file, then serve fixed-length rows from it.

Token file: every document's ids followed by the EOS id, concatenated, stored as raw ``uint16`` (vocab
<= 65536) or ``uint32`` in ``<cache_dir>/<key>.<dtype>.bin``, where the key hashes the corpus content, the
split and the tokenizer — a second run with the same corpus and tokenizer memory-maps the file instead of
re-tokenizing. The file is written to a temp name and renamed, so a killed run never leaves a short file; its
size in bytes is then recorded beside it (``<key>.<dtype>.bin.size``), and a file whose size differs (damaged
or cut short after the fact) or that has no record is tokenized again.

Rows: the token stream is cut into non-overlapping rows of ``seq_len`` tokens. Training draws rows in a
fresh permutation per epoch from ``numpy.random.default_rng([seed, epoch])``; the global batch of step
``s`` is samples ``[s·B, (s+1)·B)`` of that stream (B = rows per optimizer step over all ranks), and rank
``r`` of ``R`` takes its contiguous share. The batch depends only on (seed, step), so resuming at a step
reproduces the data exactly, and the union over ranks does not depend on the number of ranks.

Documents in a row: a row holds the end of one document, whole documents and the start of another, each ending
with EOS. :func:`document_position_ids` gives the row HF's packed-without-padding convention
(``DataCollatorWithFlattening``): positions restart at 0 at a row's first token and after every EOS, so the model
keeps the documents apart (no state, attention or window crosses an EOS) and does not score a document's first
token against the previous document.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_file, atomic_write_text, sweep_stale_temps
from ..errors import UserError
from .corpora import Corpus
from .tokenizer import eos_id, tokenizer_hash

_CHUNK_CHARS = 1 << 20
_BATCH_CHARS = 1 << 24  # characters of documents tokenized in one parallel batch


def _pieces(doc: str):
    """Split a long document into ~1 MiB pieces at line boundaries (tokenizing giant strings is slow)."""
    start = 0
    while start < len(doc):
        end = min(len(doc), start + _CHUNK_CHARS)
        if end < len(doc):
            newline = doc.find("\n", end)
            end = len(doc) if newline < 0 else newline + 1
        yield doc[start:end]
        start = end


def _token_batches(docs, tokenizer, dtype: np.dtype):
    """The token file's contents for ``docs`` in order (each document's ids, then EOS), one array per batch of
    documents of about :data:`_BATCH_CHARS` characters: the tokenizer encodes a batch's pieces in parallel on every
    core (one document at a time kept it to one: 6 minutes for python-source's 101M tokens on a 16-core machine)."""
    eos = np.asarray([eos_id(tokenizer)], dtype=dtype)
    backend = tokenizer.backend_tokenizer
    pieces, ends, chars = [], [], 0  # ends: the number of pieces up to each document's end

    def flush() -> np.ndarray:
        encoded = backend.encode_batch(pieces, add_special_tokens=False)
        parts, start = [], 0
        for end in ends:
            parts.extend(np.asarray(enc.ids, dtype=dtype) for enc in encoded[start:end])
            parts.append(eos)
            start = end
        return np.concatenate(parts)

    for doc in docs:
        for piece in _pieces(doc):
            pieces.append(piece)
            chars += len(piece)
        ends.append(len(pieces))
        if chars >= _BATCH_CHARS:
            yield flush()
            pieces, ends, chars = [], [], 0
    if ends:
        yield flush()


def token_file_path(corpus: Corpus, split: str, tokenizer, cache_dir: str | os.PathLike) -> Path:
    """Where the tokens of ``corpus``'s ``split`` under ``tokenizer`` are cached."""
    key = hashlib.sha256(f"{corpus.fingerprint}|{split}|{tokenizer_hash(tokenizer)}".encode()).hexdigest()[:24]
    dtype = "uint16" if len(tokenizer) <= 1 << 16 else "uint32"
    return Path(cache_dir) / f"{key}.{dtype}.bin"


def tokenize_split(corpus: Corpus, split: str, tokenizer, cache_dir: str | os.PathLike) -> np.memmap:
    """Token ids of one split as a read-only memmap (1-D), tokenizing only when not cached."""
    path = token_file_path(corpus, split, tokenizer, cache_dir)
    dtype = np.dtype(path.suffixes[-2][1:])
    size_record = path.with_name(path.name + ".size")
    if not (path.exists() and size_record.exists() and size_record.read_text().strip() == str(path.stat().st_size)):
        path.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_temps(path)  # a run killed while tokenizing left its partial file (hundreds of MB)
        with atomic_file(path, "wb") as f:
            for ids in _token_batches(corpus.split(split), tokenizer, dtype):
                ids.tofile(f)
        atomic_write_text(size_record, f"{path.stat().st_size}\n")
    if path.stat().st_size == 0:
        raise UserError(f"the {split} split of corpus {corpus.name!r} has no tokens; give more text")
    return np.memmap(path, dtype=dtype, mode="r")


def document_position_ids(rows: torch.Tensor, eos: int) -> torch.Tensor:
    """rows (b, l) token ids -> (b, l) long positions restarting at 0 at each row's first token and after each
    ``eos`` (the EOS closes its document and belongs to it)."""
    steps = torch.arange(rows.shape[1], device=rows.device).expand_as(rows)
    starts = torch.nn.functional.pad(rows[:, :-1] == eos, (1, 0), value=True)
    return steps - torch.where(starts, steps, 0).cummax(dim=1).values


class PackedRows:
    """Fixed-length rows of a token stream.

    ``tokens`` 1-D integer array; ``seq_len`` tokens per row; rows never overlap.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int):
        if seq_len < 2:
            raise ValueError(f"seq_len: got {seq_len}, expected an integer >= 2")
        self.tokens = tokens
        self.seq_len = seq_len
        self.num_rows = len(tokens) // seq_len
        if self.num_rows == 0:
            raise UserError(f"the corpus split has {len(tokens)} tokens, fewer than one row of seq_len={seq_len}; "
                            "use a shorter --seq-len or more text")
        self._perm_key = None
        self._perm = None

    def row(self, index: int) -> np.ndarray:
        """Row ``index`` (0 <= index < num_rows): ``(seq_len,)`` int64."""
        start = index * self.seq_len
        return np.asarray(self.tokens[start:start + self.seq_len], dtype=np.int64)

    def _permutation(self, seed: int, epoch: int) -> np.ndarray:
        if (seed, epoch) != self._perm_key:
            self._perm = np.random.default_rng([seed, epoch]).permutation(self.num_rows)
            self._perm_key = (seed, epoch)
        return self._perm

    def train_batch(self, step: int, batch_size: int, grad_accum: int, micro: int, seed: int,
                    rank: int = 0, world_size: int = 1) -> torch.Tensor:
        """Rows for micro-batch ``micro`` of optimizer step ``step`` on ``rank``: ``(batch_size, seq_len)`` long.

        The step's global batch has ``batch_size · grad_accum · world_size`` rows; see the module docstring.
        """
        per_step = batch_size * grad_accum * world_size
        first = step * per_step + (rank * grad_accum + micro) * batch_size
        rows = []
        for sample in range(first, first + batch_size):
            epoch, position = divmod(sample, self.num_rows)
            rows.append(self.row(int(self._permutation(seed, epoch)[position])))
        return torch.from_numpy(np.stack(rows))

    def eval_batches(self, batch_size: int, max_rows: int | None = None, rank: int = 0, world_size: int = 1):
        """Yield ``(b, seq_len)`` long batches of the rows ``rank::world_size`` among the first ``max_rows``."""
        count = self.num_rows if max_rows is None else min(self.num_rows, max_rows)
        mine = list(range(rank, count, world_size))
        for start in range(0, len(mine), batch_size):
            yield torch.from_numpy(np.stack([self.row(i) for i in mine[start:start + batch_size]]))
