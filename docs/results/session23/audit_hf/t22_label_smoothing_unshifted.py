# Trainer(label_smoothing_factor=0.1): for CheemsForCausalLM the Trainer scores logits[t] against labels[t]
# (no next-token shift), because it only shifts for class names in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.
import torch, torch.nn.functional as F
from common import *
from transformers import Trainer, TrainingArguments
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
x = torch.randint(0, 32, (4, 16), generator=torch.Generator().manual_seed(0))
for name in ["hf-llama", "cheems-tiny", "llama-tiny"]:
    m = (llama_model() if name == "hf-llama" else wm_model(name)).eval()
    args = TrainingArguments(output_dir="/tmp/hf_audit/ls_out", label_smoothing_factor=0.1, report_to="none", use_cpu=True)
    t = Trainer(model=m, args=args)
    with torch.no_grad():
        loss = t.compute_loss(m, {"input_ids": x, "labels": x.clone()})
        lg = m(x).logits
    shifted = F.cross_entropy(lg[:, :-1].reshape(-1, 512), x[:, 1:].reshape(-1), label_smoothing=0.1)
    unshifted = F.cross_entropy(lg.reshape(-1, 512), x.reshape(-1), label_smoothing=0.1)
    print(f"{name}: in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES={type(m).__name__ in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()}  "
          f"Trainer loss {loss.item():.4f}  shifted(next-token) {shifted.item():.4f}  unshifted {unshifted.item():.4f}")
