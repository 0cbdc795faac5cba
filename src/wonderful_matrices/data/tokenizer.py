"""Tokenizers: train a byte-level BPE on a corpus's training split, or load any HF tokenizer directory.

A trained tokenizer is saved as ``tokenizer.json`` (+ ``tokenizer_config.json``) in a directory, loadable
by ``transformers.PreTrainedTokenizerFast`` / ``AutoTokenizer``. ``<|endoftext|>`` separates documents and
doubles as BOS, EOS and padding.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from ..errors import UserError

EOS_TOKEN = "<|endoftext|>"
# Characters of text a BPE is trained on at most: its merges follow the frequent pieces, which a sample of this size
# holds, while the time and memory of training grow with the text (all of the ~300 MB python-source corpus would
# take minutes on one core).
BPE_SAMPLE_CHARS = 1 << 25


def _leading_sample(texts: Iterable[str], max_chars: int):
    """The documents of ``texts`` in order until ``max_chars`` characters have been given (the last one whole)."""
    given = 0
    for text in texts:
        if given >= max_chars:
            return
        given += len(text)
        yield text


MIN_BPE_VOCAB = 257  # the 256 bytes and <|endoftext|>


def train_bpe(texts: Iterable[str], vocab_size: int, out_dir: str | os.PathLike | None = None,
              max_chars: int = BPE_SAMPLE_CHARS):
    """Train a byte-level BPE with at most ``vocab_size`` tokens on the leading documents of ``texts`` up to
    ``max_chars`` characters (whole documents, in order; a corpus whose documents come in hash order, like
    python-source, gives a uniform sample); save it in ``out_dir`` unless None (see :func:`save_tokenizer`).
    Returns the ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < MIN_BPE_VOCAB:
        raise ValueError(f"vocab_size: got {vocab_size}, a byte-level BPE needs at least {MIN_BPE_VOCAB} "
                         "(256 bytes + <|endoftext|>)")
    if max_chars < 1:
        raise ValueError(f"max_chars: got {max_chars}, expected a positive number of characters")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS_TOKEN], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_leading_sample(texts, max_chars), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN,
                                   pad_token=EOS_TOKEN, unk_token=None)
    if out_dir is not None:
        save_tokenizer(fast, out_dir)
    return fast


def save_tokenizer(tokenizer, out_dir: str | os.PathLike) -> None:
    """``tokenizer.save_pretrained(out_dir)`` written whole or not at all (temp folder, then rename); an
    existing ``out_dir`` is replaced."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        tokenizer.save_pretrained(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# Names that end a document in common tokenizers, for a bare ``tokenizer.json`` (which names no EOS).
_EOS_NAMES = (EOS_TOKEN, "</s>", "<|end_of_text|>", "<eos>", "<|eos|>", "[SEP]")


def load_tokenizer(path: str | os.PathLike):
    """Load a tokenizer directory (or a ``tokenizer.json`` file) as a fast HF tokenizer.

    A bare ``tokenizer.json`` does not say which token is EOS: it is the file's special token named like one
    (``<|endoftext|>``, ``</s>``, ...), else its only special token.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(path)
    if not path.exists():
        raise UserError(f"tokenizer {path} not found; give a directory with tokenizer.json (or tokenizer files)")
    try:
        if path.is_dir():
            return AutoTokenizer.from_pretrained(str(path))
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(path))
    except Exception as e:  # noqa: BLE001 - whatever transformers raises, the fix is the same
        raise UserError(f"cannot load the tokenizer in {path} ({type(e).__name__}); give a directory made by "
                        "save_pretrained or a tokenizer.json file") from None
    special = [t.content for t in tokenizer.added_tokens_decoder.values() if t.special]
    named = [t for t in _EOS_NAMES if t in special]
    if named or len(special) == 1:
        eos = (named or special)[0]
        tokenizer.eos_token = tokenizer.bos_token = tokenizer.pad_token = eos
    return tokenizer


def tokenizer_hash(tokenizer) -> str:
    """A short content hash of the tokenizer (its serialized ``tokenizer.json``)."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode("utf-8")).hexdigest()[:16]


def eos_id(tokenizer) -> int:
    """The id that ends a document (EOS, else BOS/SEP/PAD)."""
    for candidate in (tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.sep_token_id,
                      tokenizer.pad_token_id):
        if candidate is not None:
            return int(candidate)
    raise UserError("the tokenizer has no EOS/BOS/SEP/PAD token to separate documents; give a tokenizer folder "
                    "whose tokenizer_config.json names eos_token, or a tokenizer.json with one special token")


def check_fits(tokenizer, vocab_size: int) -> None:
    """Raise ``UserError`` when the tokenizer has ids outside a model vocabulary of ``vocab_size``."""
    size = len(tokenizer)
    if size > vocab_size:
        raise UserError(f"the tokenizer has {size} tokens but the model's vocabulary has {vocab_size}; use a "
                        "tokenizer with at most that many tokens or a model with vocab_size >= " + str(size))


def token_byte_lengths(tokenizer) -> list[int]:
    """UTF-8 bytes each token id stands for (0 for special tokens), for bits-per-byte.

    Exact for byte-level tokenizers (each character of a token string is one byte); for others, the
    length of the decoded token.
    """
    from tokenizers import decoders

    special = set(tokenizer.all_special_ids)
    size = len(tokenizer)
    byte_level = isinstance(tokenizer.backend_tokenizer.decoder, decoders.ByteLevel)
    lengths = []
    for i in range(size):
        if i in special:
            lengths.append(0)
        elif byte_level:
            lengths.append(len(tokenizer.convert_ids_to_tokens(i)))
        else:
            lengths.append(len(tokenizer.decode([i]).encode("utf-8")))
    return lengths
