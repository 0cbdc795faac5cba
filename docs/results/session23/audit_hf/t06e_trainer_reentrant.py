# Trainer(gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": True}): HF Llama trains, Cheems crashes
import torch, sys
from common import *
from transformers import Trainer, TrainingArguments
name = sys.argv[1] if len(sys.argv) > 1 else "cheems-tiny"
class DS(torch.utils.data.Dataset):
    def __init__(s): s.x = torch.randint(0, 32, (8, 16), generator=torch.Generator().manual_seed(0))
    def __len__(s): return 8
    def __getitem__(s, i): return {"input_ids": s.x[i], "labels": s.x[i]}
m = (llama_model() if name == "hf-llama" else wm_model(name)).train()
args = TrainingArguments(output_dir="/tmp/hf_audit/gc_out", max_steps=2, per_device_train_batch_size=4, report_to="none",
                         use_cpu=True, save_strategy="no", gradient_checkpointing=True,
                         gradient_checkpointing_kwargs={"use_reentrant": True})
try: Trainer(model=m, args=args, train_dataset=DS()).train(); print(name, "trained OK")
except Exception as e: print(name, "ERR", type(e).__name__, str(e)[:200])
