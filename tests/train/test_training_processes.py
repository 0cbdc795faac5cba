"""Training in child processes: SIGKILL at a random moment then resume; two gloo ranks under torchrun."""
import json
import random
import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file
from wm_train_helpers import (
    PYTHON,
    TINY_PRESET,
    corpus_file,
    one_thread,
    subprocess_env,
    tiny_preset_without_balance_loss,
    train_argv,
)

from wonderful_matrices.cli import main
from wonderful_matrices.train import checkpoint as ckpt

_one_thread = pytest.fixture(scope="module", autouse=True)(one_thread)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("proc")
    return TINY_PRESET, corpus_file(root), root


def _final_weights(run):
    return load_file(ckpt.latest_checkpoint(run) / "model.safetensors")


def test_sigkill_at_any_moment_then_resume(setup):
    preset, data, root = setup
    argv = train_argv(preset, data, root / "killed", max_steps=8, save_interval=1, keep_last=2)
    child = subprocess.Popen([PYTHON, "-m", "wonderful_matrices.cli", *argv], env=subprocess_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not ckpt.list_checkpoints(root / "killed") and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(random.uniform(0.0, 0.3))  # saves run every step: a kill often lands inside one
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL, child.stderr.read().decode()[-2000:]
    survivor = ckpt.latest_checkpoint(root / "killed")  # never a checkpoint that fails to load
    assert survivor is not None
    ckpt.load_model(survivor)
    assert main(argv) == 0  # the same command resumes
    assert main(train_argv(preset, data, root / "straight", max_steps=8, save_interval=8)) == 0
    resumed, straight = _final_weights(root / "killed"), _final_weights(root / "straight")
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=1e-6, atol=1e-7)


@pytest.fixture(scope="module")
def single_process_run(setup):
    """6 steps of batch 4 in one process (the experts' balancing loss off: see the helper)."""
    _, data, root = setup
    preset = tiny_preset_without_balance_loss(root / "preset")
    assert main(train_argv(preset, data, root / "single", max_steps=6, batch_size=4, save_interval=6,
                           eval_interval=3)) == 0
    return preset, _final_weights(root / "single")


@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_two_gloo_ranks_end_identical_and_match_one_process(setup, single_process_run, sharding):
    _, data, root = setup
    preset, single = single_process_run
    out = root / sharding
    argv = train_argv(preset, data, out, max_steps=6, batch_size=2, save_interval=6, eval_interval=3)
    argv += ["--fsdp"] if sharding == "fsdp" else []
    done = subprocess.run([PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "wonderful_matrices.cli", *argv], env=subprocess_env(), capture_output=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    prints = summary["replica_fingerprints"]
    assert summary["world_size"] == 2 and len(prints) == 2 and prints[0] == prints[1]
    # the two ranks together see exactly the batch one process sees with twice the rows
    sharded = _final_weights(out)
    assert sharded.keys() == single.keys()
    for name in single:
        torch.testing.assert_close(sharded[name], single[name], rtol=1e-4, atol=1e-5)
