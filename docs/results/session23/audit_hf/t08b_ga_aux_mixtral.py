# Reference: HF Mixtral (router aux loss on) under the same GA=1 vs GA=2 Trainer comparison
import torch
from transformers import MixtralConfig, MixtralForCausalLM, Trainer, TrainingArguments
import t08_ga_aux as T
def step(bs, ga):
    torch.manual_seed(0)
    m = MixtralForCausalLM(MixtralConfig(vocab_size=512, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16, num_local_experts=4, num_experts_per_tok=2, output_router_logits=True, router_aux_loss_coef=0.01)).train()
    args = TrainingArguments(output_dir="/tmp/hf_audit/ga_out", max_steps=1, per_device_train_batch_size=bs, gradient_accumulation_steps=ga,
                             learning_rate=1.0, optim="sgd", lr_scheduler_type="constant", report_to="none", use_cpu=True, save_strategy="no", seed=0, max_grad_norm=0)
    t = Trainer(model=m, args=args, train_dataset=T.DS()); t.train()
    return {k: v.clone() for k, v in m.state_dict().items()}, t.state.log_history[-1]["train_loss"]
a, la = step(8, 1); b, lb = step(4, 2)
print("mixtral train_loss GA1 %.5f GA2 %.5f" % (la, lb), "rel diff %.2e" % max(((a[k]-b[k]).norm()/(a[k].norm()+1e-12)).item() for k in a))
