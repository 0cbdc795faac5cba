"""`wm generate` checks that PASS: bad arguments -> one line, exit 2, no traceback; several prompts / --prompts-file;
a checkpoint with non-finite weights refused; greedy CLI output == the Python API per prompt; seeded sampling is
reproducible.  Uses (and if missing trains, ~15 s) the tiny run /tmp/audit_gen/run.

Run from the repository root: .venv/bin/python docs/results/session24/audit_gen/cli_checks.py
"""
import os
import sys
import shutil
import subprocess
import warnings

import torch
from transformers import AutoModelForCausalLM

import wonderful_matrices  # noqa: F401  (registers the model with the Auto classes)
from wonderful_matrices.data.tokenizer import eos_id, load_tokenizer

warnings.filterwarnings("ignore")
WM, RUN = os.path.join(sys.prefix, "bin", "wm"), "/tmp/audit_gen/run"
if not os.path.isdir(RUN):
    subprocess.run([WM, "train", "--preset", "cheems-tiny", "--max-steps", "3", "--batch-size", "2", "--seq-len", "64",
                    "--eval-interval", "3", "--save-interval", "3", "--eval-rows", "2", "--out", RUN, "--no-progress"],
                   check=True, capture_output=True)
CK = f"{RUN}/checkpoint-3"


def wm(*args):
    return subprocess.run([WM, "generate", *args], capture_output=True, text=True)


print("== bad arguments")
for args in (["--max-new-tokens", "0"], ["--temperature", "0"], ["--temperature", "nan"], ["--temperature", "inf"],
             ["--top-k", "-1"], ["--top-p", "0"], ["--top-p", "nan"], ["--top-p", "1.5"], ["--batch-size", "0"],
             ["--threads", "0"], ["--device", "tpu"], ["--device", "cuda"], ["--prompts-file", "/nonexistent"],
             ["--tokenizer", "/nonexistent"], ["--max-new-tokens", "abc"]):
    r = wm(RUN, *args)
    last = r.stderr.strip().splitlines()[-1]
    ok = r.returncode == 2 and "Traceback" not in r.stderr
    print(f"{'PASS' if ok else 'FAIL'} {' '.join(args):28s} rc={r.returncode} {last}")
r = wm("/tmp/audit_gen/does_not_exist")
print(f"{'PASS' if r.returncode == 2 else 'FAIL'} missing run folder: {r.stderr.strip()}")

print("\n== non-finite checkpoint")
nan_dir = "/tmp/audit_gen/nan_model"
m = AutoModelForCausalLM.from_pretrained(CK)
with torch.no_grad():
    m.model.layers[1].mixer.out_proj.weight[0, 0] = float("nan")
m.save_pretrained(nan_dir)
for f in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(f"{RUN}/tokenizer/{f}", nan_dir)
r = wm(nan_dir, "--max-new-tokens", "3")
print(f"{'PASS' if r.returncode == 2 and 'not finite' in r.stderr else 'FAIL'} rc={r.returncode} {r.stderr.strip()}")

print("\n== several prompts (+ --prompts-file, --batch-size 2) greedy == Python API, one prompt at a time")
prompts = ["ROMEO: What light", "Hi", "", "To be, or not to be, that is the question"]
with open("/tmp/audit_gen/prompts.txt", "w") as f:
    f.write("Hi\r\n\r\n   \nTo be, or not to be, that is the question\n")
r = wm(CK, "--greedy", "--max-new-tokens", "12", "--prompt", prompts[0], "--prompt", "", "--prompts-file",
       "/tmp/audit_gen/prompts.txt", "--batch-size", "2")
cli = [c.split("\n", 1)[1].rstrip("\n") for c in r.stdout.split("--- sample ")[1:]]
order = [prompts[0], "", "Hi", prompts[3]]
tok = load_tokenizer(CK)
model = AutoModelForCausalLM.from_pretrained(CK, dtype=torch.float32).eval()
eos = eos_id(tok)
for text, p in zip(cli, order):
    ids = tok.encode(p, add_special_tokens=False) if p else [eos]
    with torch.no_grad():
        o = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=eos, pad_token_id=eos)
    api = p + tok.decode(o[0, len(ids):], skip_special_tokens=True)
    print(f"{'PASS' if api == text else 'FAIL'} {p!r:45s} -> {text!r}")
print("samples:", len(cli), "(expected 4: blank lines skipped)", r.stderr.strip().splitlines()[-1])

print("\n== seeded sampling reproducible")
a = wm(RUN, "--prompt", "A", "--prompt", "BB", "--max-new-tokens", "8", "--seed", "3").stdout
b = wm(RUN, "--prompt", "A", "--prompt", "BB", "--max-new-tokens", "8", "--seed", "3").stdout
print("PASS" if a == b else "FAIL", repr(a[:80]))
