"""Per step: tokens scored by each rank's half of the global batch (2 ranks x 2 rows) for runs/s1_docs's data."""
import sys
from wonderful_matrices.data.corpora import load_corpus
from wonderful_matrices.data.packing import PackedRows, tokenize_split, document_position_ids
from wonderful_matrices.data.tokenizer import load_tokenizer, eos_id
run = sys.argv[1] if len(sys.argv) > 1 else "runs/s1_docs"
tok = load_tokenizer(f"{run}/tokenizer"); eos = eos_id(tok)
rows = PackedRows(tokenize_split(load_corpus("docs.jsonl", 0.05), "train", tok, f"{run}/cache"), 32)
for step in range(6):
    counts = []
    for rank in range(2):
        b = rows.train_batch(step, 2, 1, 0, 0, rank, 2)
        pos = document_position_ids(b, eos)
        counts.append(int((pos[:, 1:] > 0).sum()))
    print(f"step {step + 1}: scored tokens rank0 {counts[0]}, rank1 {counts[1]}")
