"""Corpora, tokenizers and packed token rows for language-model training (stands alone in the package)."""
from .corpora import Corpus, load_corpus
from .packing import PackedRows, tokenize_split
from .tokenizer import check_fits, load_tokenizer, train_bpe

__all__ = ["Corpus", "load_corpus", "PackedRows", "tokenize_split", "check_fits", "load_tokenizer", "train_bpe"]
