"""``wm`` with a failure on one rank only (for tests/train/test_training_processes.py): run under torchrun as
``python rank_failure.py train ...``; rank 1 raises a RuntimeError in its third optimizer step."""
import os
import sys

from wonderful_matrices.cli import main
from wonderful_matrices.train import loop

real_forward_backward = loop._forward_backward


def failing_forward_backward(run, cfg, info):
    if info.rank == 1 and run.step + 1 == 3:
        raise RuntimeError(f"injected failure on rank {os.environ.get('RANK')}")
    return real_forward_backward(run, cfg, info)


loop._forward_backward = failing_forward_backward
sys.exit(main(sys.argv[1:]))
