"""What ``wm train`` writes and refuses: checks before writes, the resume rule, self-contained checkpoints, and
one-line errors for a full disk and damaged run files."""
import argparse
import errno
import json
import shutil

import pytest
import torch
from wm_train_helpers import TINY_PRESET, corpus_file, one_thread, train_argv

from wonderful_matrices.cli import main
from wonderful_matrices.train import checkpoint as ckpt

_one_thread = pytest.fixture(scope="module", autouse=True)(one_thread)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return corpus_file(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def base_run(data, tmp_path_factory):
    """A finished 4-step run (checkpoints at 2 and 4) that tests copy before changing."""
    out = tmp_path_factory.mktemp("base") / "run"
    assert main(train_argv(TINY_PRESET, data, out, max_steps=4, save_interval=2, eval_interval=2,
                           log_interval=1)) == 0
    return out


def _copy(run, tmp_path):
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def _one_line_error(capsys, fragment):
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("wm ")]
    assert len(err) == 1 and fragment in err[0] and "Traceback" not in err[0], err
    return err[0]


def _records(run, kind="train"):
    records = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    return {r["step"]: r for r in records if r["kind"] == kind}


# ------------------------------------------------------------------------------------- checks before writes
@pytest.mark.parametrize("flags, fragment", [
    (dict(validation_fraction=0), "--validation-fraction: got 0.0"),
    (dict(validation_fraction=1.5), "--validation-fraction: got 1.5"),
    (dict(clip=-1), "--clip: got -1.0"),
    (dict(weight_decay=-0.1), "--weight-decay: got -0.1"),
    (dict(min_lr_ratio=2), "--min-lr-ratio: got 2.0"),
    (dict(tokenizer="no-such-tokenizer"), "tokenizer no-such-tokenizer not found"),
    (dict(seq_len=100_000), "fewer than one row of seq_len=100000"),
    (dict(seed=-1), "--seed: got -1"),
    (dict(seed=10**20), "--seed: got 100000000000000000000"),
])
def test_a_refused_start_writes_nothing(data, tmp_path, capsys, flags, fragment):
    out = tmp_path / "run"
    assert main(train_argv(TINY_PRESET, data, out, max_steps=2, **flags)) == 2
    _one_line_error(capsys, fragment)
    assert not out.exists()


def test_a_model_too_small_for_a_trained_tokenizer_is_refused(data, tmp_path, capsys):
    from wonderful_matrices.models import presets

    presets.get(TINY_PRESET, vocab_size=100).save_pretrained(tmp_path / "config")
    out = tmp_path / "run"
    assert main(train_argv(str(tmp_path / "config"), data, out, max_steps=2)) == 2
    _one_line_error(capsys, "--preset: the model's vocab_size is 100")
    assert not out.exists()


def test_a_typo_does_not_block_the_corrected_command(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_argv("cheems-tinny", data, out, max_steps=2)) == 2
    _one_line_error(capsys, "unknown preset 'cheems-tinny'")
    assert not out.exists()
    assert main(train_argv(TINY_PRESET, data, out, max_steps=2, save_interval=2, eval_interval=2)) == 0
    assert json.loads((out / "run_config.json").read_text())["facts"]["preset"] == TINY_PRESET


def test_out_is_normalised_and_must_be_a_folder(data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(train_argv(TINY_PRESET, data, "a/../x", max_steps=1, save_interval=1, eval_interval=1)) == 0
    assert (tmp_path / "x" / "checkpoint-1").is_dir() and not (tmp_path / "a").exists()
    (tmp_path / "file").write_text("mine")
    assert main(train_argv(TINY_PRESET, data, tmp_path / "file", max_steps=1)) == 2
    _one_line_error(capsys, "is a file")
    assert (tmp_path / "file").read_text() == "mine"
    assert main(train_argv(TINY_PRESET, data, "", max_steps=1)) == 2  # not the current folder
    _one_line_error(capsys, "--out: got an empty path")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "x"]


def test_eval_and_generate_name_a_missing_folder_and_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("mine")
    for command in ("eval", "generate"):
        assert main([command, str(tmp_path / "nothing"), "--device", "cpu"]) == 2
        _one_line_error(capsys, "not found; train one first")
        assert main([command, str(tmp_path / "file"), "--device", "cpu"]) == 2
        _one_line_error(capsys, "is a file; give a run folder")


@pytest.mark.parametrize("flags, fragment", [(["--batch-size", "0"], "--batch-size: got 0"),
                                             (["--batch-size", "-1"], "--batch-size: got -1"),
                                             (["--max-rows", "0"], "--max-rows: got 0")])
def test_eval_refuses_bad_sizes_and_keeps_the_last_result(base_run, tmp_path, capsys, flags, fragment):
    run = _copy(base_run, tmp_path)
    assert main(["eval", str(run), "--max-rows", "2", "--device", "cpu"]) == 0
    before = (run / "eval.json").read_text()
    capsys.readouterr()
    assert main(["eval", str(run), "--device", "cpu", *flags]) == 2
    _one_line_error(capsys, fragment)
    assert (run / "eval.json").read_text() == before


# ---------------------------------------------------------------------------------------------- resume rule
@pytest.mark.parametrize("flags, fragment", [
    (dict(lr=1e-3), "--lr: the run in"),
    (dict(schedule="cosine"), "--schedule: the run in"),
    (dict(warmup=0.5), "--warmup: the run in"),
    (dict(clip=0.5), "--clip: the run in"),
])
def test_a_resume_refuses_other_optimisation_settings(base_run, data, tmp_path, capsys, flags, fragment):
    run = _copy(base_run, tmp_path)
    record = (run / "run_config.json").read_text()
    assert main(train_argv(TINY_PRESET, data, run, max_steps=6,
                           save_interval=2, eval_interval=2, log_interval=1, **flags)) == 2
    line = _one_line_error(capsys, fragment)
    old, new = json.loads(record)["config"][next(iter(flags))], next(iter(flags.values()))
    assert f"with {old!r}, now {new!r}" in line
    assert (run / "run_config.json").read_text() == record  # the record still tells what ran
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [2, 4]


def test_a_resume_without_its_record_checks_the_checkpoint_and_fewer_steps_are_refused(base_run, data, tmp_path,
                                                                                          capsys):
    run = _copy(base_run, tmp_path)
    (run / "run_config.json").unlink()  # lost: the checkpoint's manifest still says what the run trained
    assert main(train_argv("llama-tiny", data, run, max_steps=6, save_interval=2, eval_interval=2)) == 2
    _one_line_error(capsys, f"holds a run with preset={TINY_PRESET!r} (now 'llama-tiny')")
    assert main(train_argv(TINY_PRESET, data, run, max_steps=3, save_interval=2, eval_interval=2)) == 2
    _one_line_error(capsys, "--max-steps: got 3, but the run in")
    assert not (run / "run_config.json").exists() and [s for s, _ in ckpt.list_checkpoints(run)] == [2, 4]


def test_more_steps_continue_without_a_second_warmup(base_run, data, tmp_path, capsys):
    run = _copy(base_run, tmp_path)
    argv = train_argv(TINY_PRESET, data, run, max_steps=24, save_interval=8, eval_interval=24, log_interval=1)
    assert main(argv) == 0
    assert ("--max-steps 4 -> 24: the warm-up stays 1 steps, the decay re-planned over steps 20-24"
            in capsys.readouterr().err)
    lr = {step: r["lr"] for step, r in _records(run).items()}  # the rate each step ran with
    peak = 3e-3
    assert lr[1] == pytest.approx(peak)  # warm-up of round(0.25 * 4) = 1 step, at the first start only
    # a plan made afresh for 24 steps would warm up over 6 steps, i.e. again at steps 5 and 6
    assert all(lr[s] == pytest.approx(peak) for s in range(5, 20))
    assert lr[19] > lr[20] > lr[24] and lr[24] == pytest.approx(0.1 * peak)
    record = json.loads((run / "run_config.json").read_text())
    assert record["config"]["max_steps"] == 24 and record["schedule"] == {"max_steps": 24, "warmup_steps": 1,
                                                                          "decay_steps": 5}


# ------------------------------------------------------------------------------------- portable checkpoints
def test_a_moved_checkpoint_is_self_contained(base_run, data, tmp_path, capsys, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))

    moved = tmp_path / "elsewhere"
    shutil.copytree(base_run / "checkpoint-4", moved)
    tokenizer = AutoTokenizer.from_pretrained(moved)
    assert tokenizer.eos_token == "<|endoftext|>"
    generator = pipeline("text-generation", model=AutoModelForCausalLM.from_pretrained(moved), tokenizer=tokenizer)
    assert generator("ROMEO:", max_new_tokens=4, do_sample=False)[0]["generated_text"].startswith("ROMEO:")
    argv = ["generate", str(moved), "--prompt", "ROMEO:", "--max-new-tokens", "6", "--greedy", "--device", "cpu"]
    assert main(argv) == 0
    sample = capsys.readouterr().out
    assert main(["generate", str(base_run), *argv[2:]]) == 0 and capsys.readouterr().out == sample
    assert main(argv + ["--tokenizer", str(moved / "tokenizer.json")]) == 0 and capsys.readouterr().out == sample
    assert main(["eval", str(moved), "--data", data, "--max-rows", "2", "--device", "cpu"]) == 0
    assert "validation perplexity" in capsys.readouterr().out
    # without --data: the corpus its manifest records; nothing written beside the folder (the user's own)
    assert main(["eval", str(moved), "--max-rows", "2", "--device", "cpu"]) == 0
    assert f"of {data} in rows of 32" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "user-cache"]
    exported = tmp_path / "exported"  # a plain save_pretrained folder, no manifest
    AutoModelForCausalLM.from_pretrained(moved).save_pretrained(exported)
    tokenizer.save_pretrained(exported)
    assert main(["generate", str(exported), *argv[2:]]) == 0 and capsys.readouterr().out == sample
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (exported / name).unlink()
    capsys.readouterr()
    assert main(["generate", str(exported), *argv[2:]]) == 2
    _one_line_error(capsys, "holds no tokenizer")


# -------------------------------------------------------------------------------------- damaged run files
def test_a_full_disk_is_one_line_and_leaves_complete_checkpoints(base_run, data, tmp_path, capsys, monkeypatch):
    run = _copy(base_run, tmp_path)
    argv = train_argv(TINY_PRESET, data, run, max_steps=8, save_interval=2, eval_interval=2, log_interval=1)
    real_save = torch.save

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "trainer_state.pt")

    monkeypatch.setattr(torch, "save", disk_full)
    assert main(argv) == 2
    _one_line_error(capsys, "no space left on the device writing trainer_state.pt")
    monkeypatch.setattr(torch, "save", real_save)
    monkeypatch.setattr(ckpt, "atomic_write_text", disk_full)  # the `latest` pointer, after the rename
    assert main(argv) == 2
    _one_line_error(capsys, "no space left on the device")
    assert not list(run.glob(".tmp*"))
    for _, folder in ckpt.list_checkpoints(run):
        ckpt.verify_checkpoint(folder)
    monkeypatch.undo()
    assert main(argv) == 0
    assert json.loads((run / "summary.json").read_text())["step"] == 8


@pytest.mark.parametrize("keep_last", [1, 2])
def test_keep_last_frees_space_before_the_next_save(data, tmp_path, monkeypatch, keep_last):
    out = tmp_path / "run"
    real_save = torch.save
    present = []

    def counting_save(obj, path, *args, **kwargs):
        present.append(len(ckpt.list_checkpoints(out)))
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", counting_save)
    assert main(train_argv(TINY_PRESET, data, out, max_steps=4, save_interval=1, eval_interval=4,
                           keep_last=keep_last)) == 0
    assert present == [0, 1, 1, 1]  # never more than max(keep_last - 1, 1) old checkpoints while writing
    assert len(ckpt.list_checkpoints(out)) == keep_last


def test_a_damaged_run_record_is_one_line(base_run, tmp_path, capsys):
    run = _copy(base_run, tmp_path)
    (run / "run_config.json").write_text('{"facts": {"preset": ')
    assert main(train_argv(TINY_PRESET, "unused", run, max_steps=4)) == 2
    _one_line_error(capsys, "run_config.json is damaged")
    assert main(["eval", str(run), "--max-rows", "1"]) == 2
    _one_line_error(capsys, "run_config.json is damaged")


def test_non_utf8_metrics_lines_are_skipped(base_run, data, tmp_path):
    from wonderful_matrices.train.metrics import plot_losses, read_metrics

    run = _copy(base_run, tmp_path)
    with (run / "metrics.jsonl").open("ab") as f:
        f.write(b'{"kind": "train", "step": 3, "loss": \xff\xfe}\n\x80\x81\n')
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [r["step"] for r in
                                                                       read_metrics(base_run / "metrics.jsonl")]
    assert plot_losses(run).exists()
    assert main(train_argv(TINY_PRESET, data, run, max_steps=4, save_interval=2, eval_interval=2,
                           log_interval=1)) == 0  # the resume rewrites metrics.jsonl without the damaged lines
    assert (run / "metrics.jsonl").read_bytes().decode("utf-8")


def test_a_trainer_state_with_pickled_objects_is_refused(base_run, data, tmp_path, capsys):
    run = _copy(base_run, tmp_path)
    folder = run / "checkpoint-4"
    torch.save({"step": 4, "payload": argparse.Namespace(x=1)}, folder / ckpt.TRAINER_STATE)
    manifest = json.loads((folder / ckpt.MANIFEST).read_text())  # a consistent manifest: only the pickle is bad
    path = folder / ckpt.TRAINER_STATE
    manifest["files"][ckpt.TRAINER_STATE] = {"size": path.stat().st_size, "sha256": ckpt._sha256(path)}
    (folder / ckpt.MANIFEST).write_text(json.dumps(manifest))
    assert main(train_argv(TINY_PRESET, data, run, max_steps=6, save_interval=2, eval_interval=2,
                           log_interval=1)) == 2
    _one_line_error(capsys, "refusing to unpickle")


def test_the_plan_of_a_record_without_one_comes_from_its_flags():
    from wonderful_matrices.train.loop import TrainConfig
    from wonderful_matrices.train.resume import plan_schedule

    said = []
    before = TrainConfig(out="run", max_steps=100, warmup=0.1)
    legacy = {"facts": before.run_facts(), "config": vars(before)}  # written before plans were recorded
    plan = plan_schedule(TrainConfig(out="run", max_steps=1000, warmup=0.1), legacy, resuming=True, say=said.append)
    assert plan == {"max_steps": 1000, "warmup_steps": 10, "decay_steps": 200}
    assert said == ["--max-steps 100 -> 1000: the warm-up stays 10 steps, the decay re-planned over steps 801-1000"]
    fresh = plan_schedule(TrainConfig(out="run", max_steps=1000, warmup=0.1), legacy, resuming=False, say=said.append)
    assert fresh["warmup_steps"] == 100 and len(said) == 1  # nothing was trained yet: a new plan, nothing to say
