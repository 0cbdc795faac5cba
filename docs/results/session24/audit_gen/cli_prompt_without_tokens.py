"""Defect (CLI): `wm generate --prompt TEXT` where TEXT encodes to no token ids under the tokenizer in use prints a
full Python traceback (ValueError from the model: input_ids.shape=(1, 0)) instead of the one-line
"wm generate: error: ..." that every other bad argument gets. In a batch with other prompts the row is silently
generated from an all-padding row (no context at all).

cli.py:300 special-cases the empty string (`[eos]`) but not a prompt whose encoding is empty, e.g. whitespace under a
tokenizer whose pre-tokenizer drops it (`--tokenizer` accepts any HF tokenizer folder).

Needs the tiny run this audit trained once:
  /work/main/.venv/bin/wm train --preset cheems-tiny --max-steps 3 --batch-size 2 --seq-len 64 --eval-interval 3 \
      --save-interval 3 --eval-rows 2 --out /tmp/audit_gen/run --no-progress
(the script trains it if missing, ~15 s).

Run from the repository root: .venv/bin/python docs/results/session24/audit_gen/cli_prompt_without_tokens.py
"""
import json
import os
import sys
import subprocess

from tokenizers import Tokenizer, models, pre_tokenizers

WM = os.path.join(sys.prefix, "bin", "wm")
RUN = "/tmp/audit_gen/run"
TOK = "/tmp/audit_gen/wordlevel_tokenizer"

if not os.path.isdir(RUN):
    subprocess.run([WM, "train", "--preset", "cheems-tiny", "--max-steps", "3", "--batch-size", "2", "--seq-len", "64",
                    "--eval-interval", "3", "--save-interval", "3", "--eval-rows", "2", "--out", RUN, "--no-progress"],
                   check=True, capture_output=True)

os.makedirs(TOK, exist_ok=True)
tok = Tokenizer(models.WordLevel({"<eos>": 0, "[UNK]": 1, "hello": 2, "world": 3}, unk_token="[UNK]"))
tok.pre_tokenizer = pre_tokenizers.Whitespace()
tok.add_special_tokens(["<eos>"])
tok.save(f"{TOK}/tokenizer.json")
with open(f"{TOK}/tokenizer_config.json", "w") as f:
    json.dump({"eos_token": "<eos>", "tokenizer_class": "PreTrainedTokenizerFast"}, f)
print("encode(' ') ->", tok.encode(" ").ids, "  encode('hello') ->", tok.encode("hello").ids)

for prompts in ([" "], [" ", "hello"]):
    args = [WM, "generate", RUN, "--tokenizer", TOK, "--max-new-tokens", "3", "--greedy"]
    for p in prompts:
        args += ["--prompt", p]
    r = subprocess.run(args, capture_output=True, text=True)
    print(f"\n$ wm generate {RUN} --tokenizer {TOK} " + " ".join(f"--prompt {p!r}" for p in prompts) + " ...")
    print("exit status:", r.returncode)
    print("stderr lines:", len(r.stderr.splitlines()), "| has traceback:", "Traceback" in r.stderr)
    print("stderr last line:", r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "")
    print("stdout:", repr(r.stdout[:200]))
