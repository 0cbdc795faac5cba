import difflib
from collections import defaultdict
from wonderful_matrices.data.python_source import python_source_corpus
c = python_source_corpus()
train, val = c.train.files, c.validation.files
def env(f):
    return "base-env site-packages" if f.relative.startswith("0/site-packages/") else ("stdlib" if f.relative.startswith("0/") else "venv")
print("files by origin:", {k: sum(1 for f in train + val if env(f) == k) for k in ("stdlib", "base-env site-packages", "venv")})
by_tail = defaultdict(list)
for f in train:
    by_tail["/".join(f.relative.split("/")[-2:])].append(f)
kinds = defaultdict(int)
for f in val:
    mine = f.path.read_text().splitlines()
    for o in by_tail.get("/".join(f.relative.split("/")[-2:]), []):
        th = o.path.read_text().splitlines()
        if len(mine) > 5 and difflib.SequenceMatcher(None, mine, th, autojunk=False).ratio() >= 0.9:
            kinds["two environments" if env(f) != env(o) else "vendored copy in one environment"] += f.size
            break
print({k: f"{v/c.manifest['validation_bytes']:.1%}" for k, v in kinds.items()})
