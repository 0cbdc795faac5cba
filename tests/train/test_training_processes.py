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


def _torchrun(argv, script=("-m", "wonderful_matrices.cli"), timeout=150):
    """``argv`` under torchrun with two gloo ranks (a hang fails the test at ``timeout`` seconds)."""
    return subprocess.run([PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *script,
                           *argv], env=subprocess_env(), capture_output=True, timeout=timeout)


def test_a_failure_on_one_rank_ends_the_job(setup, single_process_run):
    # the failing rank waited in the shutdown barrier, the others in the step's collective: the job hung forever
    _, data, root = setup
    preset, _ = single_process_run
    from pathlib import Path

    script = str(Path(__file__).with_name("rank_failure.py"))
    done = _torchrun(train_argv(preset, data, root / "one-fails", max_steps=6, batch_size=2), script=(script,))
    assert done.returncode != 0 and b"injected failure on rank 1" in done.stderr


def test_rank_zeros_os_error_reaches_every_rank(setup):
    # an --out below a file: rank 0's OSError skipped the broadcast rank 1 waited in (a hang); one message, once
    preset, data, root = setup
    done = _torchrun(train_argv(preset, data, data + "/run", max_steps=2, batch_size=2))
    errors = [line for line in done.stderr.decode().splitlines() if line.startswith("wm train: error:")]
    assert done.returncode != 0 and len(errors) == 1 and "cannot use" in errors[0], done.stderr.decode()[-2000:]


def test_fsdp_evaluates_when_ranks_have_different_numbers_of_rows(setup, single_process_run):
    # 5 validation rows in batches of 2: rank 0 makes two forward calls, rank 1 one; under FSDP each is a collective
    _, data, root = setup
    preset, _ = single_process_run
    done = _torchrun(train_argv(preset, data, root / "uneven", max_steps=2, batch_size=2, eval_rows=5,
                                eval_interval=1, save_interval=2) + ["--fsdp"])
    assert done.returncode == 0, done.stderr.decode()[-3000:]


def test_resuming_with_another_number_of_processes_is_refused(setup, single_process_run, capsys):
    # the rows of each rank, and the global batch, depend on the world size: 2 -> 1 repeated rows, 1 -> 2 skipped some
    _, data, root = setup
    preset, _ = single_process_run
    argv = train_argv(preset, data, root / "two-then-one", max_steps=2, batch_size=2, save_interval=2)
    assert _torchrun(argv).returncode == 0
    assert main(train_argv(preset, data, root / "two-then-one", max_steps=4, batch_size=2, save_interval=2)) == 2
    assert "was trained by 2 process(es) (checkpoint-2), this one has 1" in capsys.readouterr().err


def test_packed_documents_weigh_every_target_alike(setup, single_process_run):
    # a row scores fewer targets the more documents start in it (a document's first token is not predicted): the
    # step's loss is the mean over all its targets, not the mean of the micro-batches' or the ranks' own means
    # (with those, 2 ranks x 2 rows and 2 x 2 accumulated rows ended 8% from 4 rows in one process, now 1e-4)
    import random

    from wonderful_matrices.data.corpora import shakespeare_documents

    _, _, root = setup
    preset, _ = single_process_run
    lines, docs, rng = shakespeare_documents()[0][:40_000].splitlines(), [], random.Random(0)
    while lines:  # documents of 1 to 6 lines: several start in most 32-token rows
        n = rng.randint(1, 6)
        docs.append("\n".join(lines[:n]))
        lines = lines[n:]
    data = root / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    common = dict(max_steps=6, save_interval=6, eval_interval=6)
    assert main(train_argv(preset, str(data), root / "docs-one", batch_size=4, **common)) == 0
    assert main(train_argv(preset, str(data), root / "docs-accum", batch_size=2, grad_accum=2, **common)) == 0
    done = _torchrun(train_argv(preset, str(data), root / "docs-two", batch_size=2, **common))
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    one = _final_weights(root / "docs-one")
    for other in ("docs-accum", "docs-two"):
        weights = _final_weights(root / other)
        for name in one:
            assert (weights[name] - one[name]).abs().max() <= 1e-3 * one[name].abs().max(), (other, name)
