import json, random
from pathlib import Path
from wonderful_matrices.data.corpora import shakespeare_documents
from wonderful_matrices.models import presets
root = Path("/tmp/dist_audit")
text = shakespeare_documents()[0][:40_000]
(root / "corpus.txt").write_text(text)
# many short documents of varying length -> rows hold several documents
rng = random.Random(0)
lines = text.splitlines()
docs, i = [], 0
while i < len(lines):
    n = rng.randint(1, 6)
    docs.append("\n".join(lines[i:i + n])); i += n
with open(root / "docs.jsonl", "w") as f:
    for d in docs:
        f.write(json.dumps({"text": d}) + "\n")
print(len(docs), "docs")
for name in ("cheems-tiny", "llama-tiny"):
    c = presets.get(name)
    if hasattr(c, "balance_loss_weight"):
        c.balance_loss_weight = 0.0
    c.save_pretrained(root / f"preset-{name}-nobal")
    print(name, c.vocab_size, getattr(c, "balance_loss_weight", None))
