# One SGD step via transformers.Trainer: batch 8 (GA=1) vs 2 micro-batches of 4 (GA=2) must give the same update.
import torch, sys, shutil
from common import *
from transformers import Trainer, TrainingArguments
class DS(torch.utils.data.Dataset):
    def __init__(s):
        s.x = torch.randint(0, 32, (8, 16), generator=torch.Generator().manual_seed(0))
    def __len__(s): return 8
    def __getitem__(s, i): return {"input_ids": s.x[i], "labels": s.x[i]}
def step(name, bs, ga, **kw):
    m = (llama_model() if name == "hf-llama" else wm_model(name, **kw)).train()
    args = TrainingArguments(output_dir="/tmp/hf_audit/ga_out", max_steps=1, per_device_train_batch_size=bs,
                             gradient_accumulation_steps=ga, learning_rate=1.0, optim="sgd", lr_scheduler_type="constant",
                             report_to="none", use_cpu=True, save_strategy="no", seed=0, max_grad_norm=0)
    t = Trainer(model=m, args=args, train_dataset=DS())
    t.train()
    return {k: v.clone() for k, v in m.state_dict().items()}, t.state.log_history[-1]["train_loss"]
if __name__ == "__main__":
  for name, kw in [("hf-llama", {}), ("llama-tiny", {}), ("cheems-tiny", {}), ("cheems-tiny", {"balance_loss_weight": 0.0}), ("jamba-tiny", {})]:
    a, la = step(name, 8, 1, **kw); b, lb = step(name, 4, 2, **kw)
    rel = max(((a[k] - b[k]).norm() / (a[k].norm() + 1e-12)).item() for k in a if a[k].is_floating_point())
    print(name, kw, "train_loss GA1 %.5f GA2 %.5f" % (la, lb), "max rel param diff after 1 step %.2e" % rel)
