# 4 rows in one process against 2 x 2 accumulated rows and 2 ranks x 2 rows on many-document data (docs.jsonl built
# here): the largest weight difference over the largest weight, per tensor, after N steps.
# python compare_packed_docs.py OUTDIR SRC_DIR STEPS   (SRC_DIR: the library sources to run)
import sys, json, random, subprocess, os
from pathlib import Path
import torch
from safetensors.torch import load_file
root = Path(sys.argv[1]); root.mkdir(parents=True, exist_ok=True)
src = sys.argv[2]
from wonderful_matrices.data.corpora import shakespeare_documents
lines = shakespeare_documents()[0][:40_000].splitlines()
rng = random.Random(0); docs, i = [], 0
while i < len(lines):
    n = rng.randint(1, 6); docs.append("\n".join(lines[i:i + n])); i += n
(root / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
env = dict(os.environ, PYTHONPATH=src, OMP_NUM_THREADS="1")
py = sys.executable
preset = "/tmp/dist_audit/preset-cheems-tiny-nobal"
def run(out, extra, ranks=1):
    cmd = ([py, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"] if ranks == 2 else [py]) + \
        ["-m", "wonderful_matrices.cli", "train", "--preset", preset, "--data", str(root / "docs.jsonl"), "--out", str(root / out),
         "--max-steps", sys.argv[3], "--seq-len", "32", "--lr", "3e-3", "--eval-interval", "100", "--save-interval", sys.argv[3],
         "--eval-rows", "8", "--warmup", "0.25", "--device", "cpu", "--no-progress"] + extra
    r = subprocess.run(cmd, env=env, capture_output=True); assert r.returncode == 0, r.stderr.decode()[-2000:]
    d = root / out; latest = (d / "latest").read_text().strip()
    return load_file(d / latest / "model.safetensors")
one = run("one", ["--batch-size", "4"])
for name, w in (("accum", run("accum", ["--batch-size", "2", "--grad-accum", "2"])), ("two", run("two", ["--batch-size", "2"], 2))):
    print(name, max(((w[k] - one[k]).abs().max() / one[k].abs().max()).item() for k in one))
