"""Where issue #15's lm-scale training goes NaN (session 24 probe; run on the GPU machine).

    python docs/results/session24/nan_probe.py FAMILY MODE CACHE_DIR OUT_JSON [LR] [SEED]
    (a CPU smoke run: PROBE_SIZE=tiny PROBE_TOKENS=50000 PROBE_DATA=shakespeare PROBE_VOCAB=512)

Trains ``FAMILY-base`` exactly as ``wm bench lm --data python-source --train-tokens 25000000`` does
(:func:`wonderful_matrices.bench.lm_common.train_lm`'s rows, AdamW, clipping, schedule, bf16 autocast) but reads the
loss and the gradient norm after every step (one host synchronisation per step). MODE: ``eager``, ``compiled``
(the forward and backward under ``torch.compile``, as ``--compiled-training``), ``graphed`` or ``compiled+graphed``
(every step replayed from a CUDA graph, as ``--graphed-training``: the weights are copied before each replay and put
back when it gives a non-finite loss, whose optimizer update the replay has made already). At the first step whose
loss or gradient norm is not finite (on the weights of the previous, finite step) it looks at that batch eagerly:
the parameters whose gradients are not finite; the modules whose forward output / input gradient is not finite,
in the order they ran (eager hooks); the same batch's loss and gradient norm with every Triton kernel replaced by
its PyTorch fallback, and in float32 without autocast. Writes OUT_JSON with every step's loss and gradient norm.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import torch

import wonderful_matrices.ops.common as ops_common
from wonderful_matrices.bench.lm_common import compiled_lm_loss, corpus_tokens, lm_loss, training_loss
from wonderful_matrices.bench.lm_scale import run_model
from wonderful_matrices.data.packing import PackedRows
from wonderful_matrices.models import CheemsForCausalLM
from wonderful_matrices.train.graph_step import GraphedTrainStep
from wonderful_matrices.train.optim import adamw, make_capturable
from wonderful_matrices.train.schedule import lr_multiplier

SEQ_LEN, BATCH, TOKENS = 2048, 8, 25_000_000
SIZE = os.environ.get("PROBE_SIZE", "base")  # "tiny" for a CPU smoke run of the probe itself


def finite(t) -> bool:
    return t is not None and bool(torch.isfinite(t).all())


def grad_norm_of(model) -> torch.Tensor:
    return torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])


def examine(model, rows, device, eos) -> dict:
    """The offending batch, on the current (finite) weights: where the non-finite values first appear."""
    report = {"params_finite": all(finite(p) for p in model.parameters())}
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not finite(p.grad)]
    report["grads_not_finite"] = {"count": len(bad), "first": bad[:12]}
    model.zero_grad(set_to_none=True)
    order, hooks = [], []

    def fwd_hook(name):
        def hook(module, args, output):
            outs = output if isinstance(output, (tuple, list)) else (output,)
            tensors = [o for o in outs if isinstance(o, torch.Tensor) and o.is_floating_point()]
            if tensors and not all(finite(o) for o in tensors):
                order.append(("forward", name, type(module).__name__))
        return hook

    def bwd_hook(name):
        def hook(module, grad_input, grad_output):
            if not all(finite(g) for g in grad_output if g is not None):
                order.append(("grad_output", name, type(module).__name__))
            if not all(finite(g) for g in grad_input if g is not None):
                order.append(("grad_input", name, type(module).__name__))
        return hook

    for name, module in model.named_modules():
        hooks.append(module.register_forward_hook(fwd_hook(name)))
        hooks.append(module.register_full_backward_hook(bwd_hook(name)))
    try:
        loss = training_loss(model, rows, device, None, eos)
        loss.backward()
        report["hooked_loss"] = float(loss)
        report["hooked_grad_norm"] = float(grad_norm_of(model))
    except Exception as error:  # noqa: BLE001 -- a probe reports whatever fails and goes on
        report["hooked_error"] = f"{type(error).__name__}: {error}"[:400]
    for h in hooks:
        h.remove()
    report["first_not_finite"] = order[:40]
    for label, patch, autocast in (("torch_fallbacks", True, True), ("float32_triton", False, False)):
        model.zero_grad(set_to_none=True)
        saved = ops_common.TRITON_INSTALLED
        ops_common.TRITON_INSTALLED = saved and not patch
        try:
            if autocast:
                loss = training_loss(model, rows, device, None, eos)
            else:
                loss = lm_loss(model, rows, eos)
            loss.backward()
            report[label] = {"loss": float(loss), "grad_norm": float(grad_norm_of(model))}
        except Exception as error:  # noqa: BLE001 -- reported, the probe goes on
            report[label] = {"error": f"{type(error).__name__}: {error}"[:400]}
        finally:
            ops_common.TRITON_INSTALLED = saved
    model.zero_grad(set_to_none=True)
    return report


def main(family: str, mode: str, cache_dir: str, out: str, lr: float = 1e-3, seed: int = 1) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    corpus = corpus_tokens(os.environ.get("PROBE_DATA", "python-source"), int(os.environ.get("PROBE_VOCAB", 32768)),
                           cache_dir)
    _, config = run_model(family, SIZE, None, vocab_size=corpus.vocab_size, use_cache=False)
    torch.manual_seed(seed)
    model = CheemsForCausalLM(config).to(device)
    steps = math.ceil(int(os.environ.get("PROBE_TOKENS", TOKENS)) / (BATCH * SEQ_LEN))
    opt = adamw(model, lr, 0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_multiplier("cosine", steps, max(1, steps // 20), min_ratio=0.1))
    data = PackedRows(corpus.train, SEQ_LEN + 1)
    loss_fn = compiled_lm_loss() if mode.startswith("compiled") else None
    graphed = mode.endswith("graphed")
    if graphed:
        if device.type == "cuda":
            make_capturable(opt, device)
        graph_step = GraphedTrainStep(lambda rows: training_loss(model, rows, device, loss_fn, corpus.eos),
                                      model.parameters(), opt, max_grad_norm=1.0, use_graph=device.type == "cuda")
        params = list(model.parameters())
        before = [torch.empty_like(p) for p in params]
    result = {"family": family, "mode": mode, "lr": lr, "seed": seed, "steps": steps, "losses": [], "grad_norms": [],
              "bad_step": None}
    start = time.perf_counter()
    model.train()
    for step in range(steps):
        rows = data.train_batch(step, BATCH, grad_accum=1, micro=0, seed=seed).to(device)
        if graphed:
            torch._foreach_copy_(before, [p.detach() for p in params])
            loss = graph_step(rows)
            loss_v, norm_v = float(loss), float(graph_step.grad_norm)
            if not (math.isfinite(loss_v) and math.isfinite(norm_v)):
                with torch.no_grad():
                    torch._foreach_copy_(params, before)
            else:
                sched.step()
        else:
            loss = training_loss(model, rows, device, loss_fn, corpus.eos)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            loss_v, norm_v = float(loss.detach()), float(norm)
        result["losses"].append(round(loss_v, 4))
        result["grad_norms"].append(round(norm_v, 4))
        if not (math.isfinite(loss_v) and math.isfinite(norm_v)):
            result["bad_step"] = step + 1
            result["lr_at_bad_step"] = sched.get_last_lr()[0]
            result["examine"] = examine(model, rows, device, corpus.eos)
            torch.save(rows.cpu(), Path(out).with_suffix(".rows.pt"))
            break
        if not graphed:
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        if step % 100 == 0:
            print(f"step {step}: loss {loss_v:.4f} grad norm {norm_v:.3f} ({time.perf_counter() - start:.0f} s)",
                  flush=True)
    result["wall_s"] = round(time.perf_counter() - start, 1)
    Path(out).write_text(json.dumps(result, indent=1, default=float))
    summary = {k: v for k, v in result.items() if k not in ("losses", "grad_norms")}
    print(json.dumps(summary, indent=1, default=float), flush=True)  # (a graphed run's learning rate is a tensor)


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0], args[1], args[2], args[3], *(float(args[4]),) if len(args) > 4 else (),
         *(int(args[5]),) if len(args) > 5 else ())
