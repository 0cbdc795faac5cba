"""Issue #15: does compiled_lm_loss give a non-finite loss where the eager loss is finite, on fixed weights?
    python docs/results/session25/compiled_nan.py CACHE_DIR [STEPS] [VARIANT]   (TORCH_LOGS=recompiles: recompiles)
VARIANT "attention-eager": the packed-documents attention (layers.attention.attend_documents) left out of the
compiled graph; "unpacked": no document boundaries (eos None).
llama-base at its initial weights (seed 1), the lm-scale batches 0..STEPS-1: per batch the compiled and the eager
loss (bf16 autocast, no optimizer step) and the batch's document count."""
import math
import sys

import torch

import wonderful_matrices.layers.attention as attention_module
from wonderful_matrices.bench.lm_common import compiled_lm_loss, corpus_tokens, training_loss
from wonderful_matrices.bench.lm_scale import run_model
from wonderful_matrices.data.packing import PackedRows
from wonderful_matrices.models import CheemsForCausalLM

device = torch.device("cuda")
variant = sys.argv[3] if len(sys.argv) > 3 else "compiled"
if variant == "attention-eager":
    attention_module.attend_documents = torch.compiler.disable(attention_module.attend_documents)
corpus = corpus_tokens("python-source", 32768, sys.argv[1])
_, config = run_model("llama", "base", None, vocab_size=corpus.vocab_size, use_cache=False)
torch.manual_seed(1)
model = CheemsForCausalLM(config).to(device)
data = PackedRows(corpus.train, 2049)
compiled = compiled_lm_loss()
for step in range(int(sys.argv[2]) if len(sys.argv) > 2 else 8):
    rows = data.train_batch(step, 8, grad_accum=1, micro=0, seed=1).to(device)
    eos = None if variant == "unpacked" else corpus.eos
    docs = int((rows == corpus.eos).sum())
    with torch.no_grad():
        eager = float(training_loss(model, rows, device, None, eos))
    c = training_loss(model, rows, device, compiled, eos)
    c.backward()
    norm = float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None]))
    model.zero_grad(set_to_none=True)
    print(f"{variant} batch {step}: eos {docs} eager {eager:.5f} compiled {float(c):.5f} grad norm {norm:.4f}"
          f"{'  NOT FINITE' if not (math.isfinite(float(c)) and math.isfinite(norm)) else ''}", flush=True)
