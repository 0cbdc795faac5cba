import subprocess, torch, wonderful_matrices
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
from wonderful_matrices.data.tokenizer import load_tokenizer, eos_id
ck = "/tmp/audit_gen/run/checkpoint-3"
prompts = ["ROMEO: What light", "Hi", "", "To be, or not to be, that is the question"]
args = ["/work/main/.venv/bin/wm", "generate", ck, "--greedy", "--max-new-tokens", "12"]
for p in prompts: args += ["--prompt", p]
out = subprocess.run(args, capture_output=True, text=True)
print(out.stdout); print(out.stderr[-300:])
tok = load_tokenizer(ck)
m = AutoModelForCausalLM.from_pretrained(ck, dtype=torch.float32).eval()
eos = eos_id(tok)
texts=[]
for p in prompts:
    ids = tok.encode(p, add_special_tokens=False) if p else [eos]
    with torch.no_grad():
        o = m.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=eos, pad_token_id=eos)
    texts.append(p + tok.decode(o[0, len(ids):], skip_special_tokens=True))
cli = out.stdout.split("--- sample ")[1:]
cli = [c.split("\n",1)[1].rstrip("\n") for c in cli]
for a,b in zip(cli, texts): print(a == b, repr(a), repr(b))
