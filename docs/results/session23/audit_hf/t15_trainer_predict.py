# Trainer.evaluate with compute_metrics / Trainer.predict (prediction_loss_only=False): logits gathered across batches
import torch, sys, numpy as np
from common import *
from transformers import Trainer, TrainingArguments
name = sys.argv[1] if len(sys.argv) > 1 else "cheems-tiny"
class DS(torch.utils.data.Dataset):
    def __init__(s): s.x = torch.randint(0, 32, (6, 12), generator=torch.Generator().manual_seed(0))
    def __len__(s): return 6
    def __getitem__(s, i): return {"input_ids": s.x[i], "labels": s.x[i]}
m = llama_model() if name == "hf-llama" else wm_model(name)
def metrics(p):
    preds = p.predictions[0] if isinstance(p.predictions, tuple) else p.predictions
    return {"shape": str(np.shape(preds)), "n_outputs": len(p.predictions) if isinstance(p.predictions, tuple) else 1}
args = TrainingArguments(output_dir="/tmp/hf_audit/pred_out", per_device_eval_batch_size=4, report_to="none", use_cpu=True)
t = Trainer(model=m, args=args, eval_dataset=DS(), compute_metrics=metrics)
try: print("evaluate", t.evaluate())
except Exception as e: print("evaluate ERR", type(e).__name__, str(e)[:300])
try:
    p = t.predict(DS()); print("predict", type(p.predictions), np.shape(p.predictions[0] if isinstance(p.predictions, tuple) else p.predictions), p.metrics.get("test_loss"))
except Exception as e: print("predict ERR", type(e).__name__, str(e)[:300])
