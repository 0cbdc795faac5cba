"""Q5: a run of `wm bench lm --seeds/--train-tokens` cut mid-training and resumed (a new process's state: fresh
model, checkpoint on disk) ends with the uncut run's losses, weights-dependent perplexities and data order, on
packed documents (the corpus has EOS; the library's own resume test uses rows without EOS); and what the merge does
with the devices the runs were measured on.
Usage: PYTHONPATH=src python q5_resume_and_merge.py
"""
import json
import sys
import tempfile
from pathlib import Path

from wonderful_matrices.bench import lm, lm_scale
from wonderful_matrices.data import packing
from wonderful_matrices.data.corpora import shakespeare_documents

SAME = ("train_losses", "final_train_loss", "val_ppl@16", "val_ppl@32", "val_ppl@64", "scored@64",
        "scored_beyond@64", "steps", "train_tokens")


def main() -> int:
    tmp = Path(tempfile.mkdtemp())
    (tmp / "docs").mkdir()
    for i, play in enumerate(shakespeare_documents()[:3]):  # three documents: EOS inside the rows
        (tmp / "docs" / f"play{i}.txt").write_text(play[:20_000])
    options = dict(quick=True, size="tiny", vocab_size=300, seq_len=16, batch=2, eval_tokens=512, contexts=(1024,),
                   families=("cheems", "mamba2"), seeds=(0,), train_tokens=16 * 2 * 7, eval_contexts=(32, 64),
                   data=str(tmp / "docs"), cache_dir=tmp / "cache", checkpoint_every=2)
    uncut = lm.run(tmp / "uncut", **options)
    real = packing.PackedRows.train_batch
    seen = []

    def cut(self, step, *args, **kwargs):
        seen.append(step)
        if step == 5 and len(seen) < 20:
            raise KeyboardInterrupt
        return real(self, step, *args, **kwargs)

    packing.PackedRows.train_batch = cut
    try:
        lm.run(tmp / "cut", **options)
    except KeyboardInterrupt:
        print("cut at step 5 of 7 (checkpoint of step 4 on disk)")
    packing.PackedRows.train_batch = real
    resumed = lm.run(tmp / "cut", **{**options, "families": ("cheems",)})
    ok = resumed[0]["resumed_at_step"] == 4 and all(resumed[0][k] == uncut[0][k] for k in SAME)
    print(f"cheems-tiny resumed at step {resumed[0]['resumed_at_step']}: "
          + ", ".join(f"{k} {'same' if resumed[0][k] == uncut[0][k] else 'DIFFERENT'}" for k in SAME))

    # the merge: the same runs recorded as measured on two kinds of GPU
    data = json.loads((tmp / "uncut" / "mamba2-tiny-seed0" / "results.json").read_text())
    other = tmp / "uncut" / "mamba2-tiny-seed1"
    other.mkdir()
    data["meta"]["seed"], data["rows"][0]["seed"] = 1, 1
    data["environment"]["device"] = "NVIDIA H200"
    (other / "results.json").write_text(json.dumps(data))
    merged = lm_scale.merge_results(tmp / "merged", [tmp / "uncut"])
    mamba = next(r for r in merged if r["preset"] == "mamba2-tiny")
    print(f"merge of one seed on {json.loads((tmp / 'uncut' / 'mamba2-tiny-seed0' / 'results.json').read_text())['environment']['device']!r} and one on "
          f"'NVIDIA H200': mamba2-tiny train_tokens_per_s {mamba['train_tokens_per_s']}, device "
          f"{mamba.get('device', '(not recorded)')}; merged header: "
          f"{(tmp / 'merged' / 'results.md').read_text().splitlines()[2]}")
    return int(not ok)


if __name__ == "__main__":
    sys.exit(main())
