# Trainer extras: label_smoothing_factor, training-mode logits, neftune, bf16 autocast on CPU
import torch, sys
from common import *
from transformers import Trainer, TrainingArguments
name = sys.argv[1] if len(sys.argv) > 1 else "cheems-tiny"
class DS(torch.utils.data.Dataset):
    def __init__(s): s.x = torch.randint(0, 32, (8, 16), generator=torch.Generator().manual_seed(0))
    def __len__(s): return 8
    def __getitem__(s, i): return {"input_ids": s.x[i], "labels": s.x[i]}
for extra in [dict(label_smoothing_factor=0.1), dict(neftune_noise_alpha=5.0), dict(bf16=True), dict(torch_empty_cache_steps=1), dict(eval_strategy="steps", eval_steps=2, load_best_model_at_end=True, save_steps=2, metric_for_best_model="eval_loss")]:
    m = (llama_model() if name == "hf-llama" else wm_model(name)).train()
    args = TrainingArguments(output_dir="/tmp/hf_audit/extra_out", max_steps=4, per_device_train_batch_size=4, report_to="none",
                             use_cpu=True, save_strategy="steps" if "load_best_model_at_end" in extra else "no", logging_steps=1, **extra)
    try:
        t = Trainer(model=m, args=args, train_dataset=DS(), eval_dataset=DS()); t.train()
        print(name, extra, "OK losses", [round(h["loss"], 3) for h in t.state.log_history if "loss" in h])
    except Exception as e: print(name, extra, "ERR", type(e).__name__, str(e)[:200])
