"""Fault injection around `wm` (nothing under /work/main is changed): run as
    torchrun ... inject.py train ...
with INJECT=<what> and INJECT_RANK=<rank>, INJECT_STEP=<optimizer step, 1-based>:
  nanbwd   - that rank's micro-batch loss is NaN before backward (NaN gradients, all-reduced into both ranks)
  nan      - that rank's loss becomes NaN at that step (as a diverging shard would)
  savefail - that rank's checkpoint save raises ENOSPC (a full disk on rank 0)
  crash    - that rank raises RuntimeError at that step (a bug or OOM on one rank)
  sigkill  - that rank SIGKILLs itself at that step
"""
import errno, os, signal, sys
import torch
from wonderful_matrices.train import loop, checkpoint
from wonderful_matrices.cli import main

what = os.environ.get("INJECT", "")
rank = int(os.environ.get("RANK", "0"))
me = rank == int(os.environ.get("INJECT_RANK", "1"))
at = int(os.environ.get("INJECT_STEP", "3"))

orig_fb = loop._forward_backward
def fb(run, cfg, info):
    loss = orig_fb(run, cfg, info)
    if me and run.step + 1 == at:
        if what == "nan":
            return loss * float("nan")
        if what == "crash":
            raise RuntimeError("injected failure on rank %d" % rank)
        if what == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
    return loss
loop._forward_backward = fb

orig_step_loss = loop._step_loss
STEP = {"n": 0}
def step_loss(run, cfg, batch):
    loss = orig_step_loss(run, cfg, batch)
    if what == "nanbwd" and me and run.step + 1 == at:
        return loss * float("nan")
    return loss
loop._step_loss = step_loss

orig_save = checkpoint.save_checkpoint
def save(run_dir, step, *a, **k):
    if what == "savefail" and me and step == at:
        raise OSError(errno.ENOSPC, "No space left on device (injected)", str(run_dir))
    return orig_save(run_dir, step, *a, **k)
checkpoint.save_checkpoint = save
loop.ckpt.save_checkpoint = save

if os.environ.get("DUMP_AFTER"):  # print every thread's stack after that many seconds (to see where a hang sits)
    import faulthandler
    faulthandler.dump_traceback_later(float(os.environ["DUMP_AFTER"]), exit=False)
sys.exit(main(sys.argv[1:]))
