import torch, sys, os, shutil, json
from common import *
from transformers import Trainer, TrainingArguments
name = sys.argv[1] if len(sys.argv) > 1 else "cheems-tiny"
extra = dict(a.split("=") for a in sys.argv[2:])
class DS(torch.utils.data.Dataset):
    def __init__(s, n, seed): 
        g = torch.Generator().manual_seed(seed)
        base = torch.randint(0, 32, (n, 16), generator=g)   # small alphabet: learnable
        s.x = base
    def __len__(s): return len(s.x)
    def __getitem__(s, i): return {"input_ids": s.x[i], "labels": s.x[i], "attention_mask": torch.ones(16, dtype=torch.long)}
out = f"/tmp/hf_audit/trainer_out_{name}"
shutil.rmtree(out, ignore_errors=True)
def make(max_steps, **kw):
    m = (llama_model() if name == "hf-llama" else wm_model(name)).train()
    args = TrainingArguments(output_dir=out, max_steps=max_steps, per_device_train_batch_size=4, learning_rate=3e-3,
                             logging_steps=1, save_steps=5, report_to="none", use_cpu=True, eval_strategy="no",
                             per_device_eval_batch_size=4, seed=0, data_seed=0, **kw)
    return Trainer(model=m, args=args, train_dataset=DS(32, 0), eval_dataset=DS(8, 1))
kw = {}
if extra.get("gc") == "1": kw["gradient_checkpointing"] = True
if extra.get("ga"): kw["gradient_accumulation_steps"] = int(extra["ga"])
t = make(10, **kw)
r = t.train()
losses = [h["loss"] for h in t.state.log_history if "loss" in h]
print("losses", [round(l, 3) for l in losses])
print("eval", t.evaluate())
# resume: train 10 steps straight vs 5 + resume from checkpoint-5
full_params = {k: v.clone() for k, v in t.model.state_dict().items()}
print("ckpts", sorted(os.listdir(out)))
t2 = make(10, **kw)
t2.train(resume_from_checkpoint=os.path.join(out, "checkpoint-5"))
sd2 = t2.model.state_dict()
print("resume max param diff", max((sd2[k] - full_params[k]).abs().max().item() for k in full_params))
losses2 = [h["loss"] for h in t2.state.log_history if "loss" in h]
print("resumed losses", [round(l, 3) for l in losses2])
