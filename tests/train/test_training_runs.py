import json
import math

import pytest
import torch
from safetensors.torch import load_file
from wm_train_helpers import TINY_PRESET, TINY_VOCAB, corpus_file, one_thread, train_argv

from wonderful_matrices.cli import main
from wonderful_matrices.data import packing
from wonderful_matrices.train import checkpoint as ckpt

_one_thread = pytest.fixture(scope="module", autouse=True)(one_thread)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return TINY_PRESET, corpus_file(root), root


@pytest.fixture(scope="module")
def finished_run(setup):
    """An uninterrupted 8-step run with grad accumulation, checkpoints at 4 and 8."""
    preset, data, root = setup
    out = root / "full"
    assert main(train_argv(preset, data, out, grad_accum=2)) == 0
    return out


def _weights(run):
    return load_file(ckpt.latest_checkpoint(run) / "model.safetensors")


def test_tiny_run_lowers_the_loss_and_writes_its_files(finished_run):
    records = [json.loads(line) for line in (finished_run / "metrics.jsonl").read_text().splitlines()]
    train = [r["loss"] for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [4, 8]
    assert train[-1] < train[0] - 0.3
    assert evals[-1]["loss"] < evals[0]["loss"] < math.log(TINY_VOCAB)
    assert (finished_run / "loss.png").stat().st_size > 1000
    assert [s for s, _ in ckpt.list_checkpoints(finished_run)] == [4, 8]
    assert (finished_run / "tokenizer" / "tokenizer.json").exists()
    summary = json.loads((finished_run / "summary.json").read_text())
    assert summary["step"] == 8 and summary["tokens"] == 8 * 2 * 4 * 32


def test_resume_after_interruption_matches_uninterrupted_run(setup, finished_run, monkeypatch):
    preset, data, root = setup
    out = root / "interrupted"
    real = packing.PackedRows.train_batch

    def crash_after_step_5(self, step, *args, **kwargs):
        if step == 5:
            raise KeyboardInterrupt
        return real(self, step, *args, **kwargs)

    monkeypatch.setattr(packing.PackedRows, "train_batch", crash_after_step_5)
    assert main(train_argv(preset, data, out, grad_accum=2)) == 130
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [4]
    monkeypatch.setattr(packing.PackedRows, "train_batch", real)
    assert main(train_argv(preset, data, out, grad_accum=2)) == 0  # the same command resumes at step 4
    resumed, full = _weights(out), _weights(finished_run)
    assert resumed.keys() == full.keys()
    for name in full:
        torch.testing.assert_close(resumed[name], full[name], rtol=1e-6, atol=1e-7)
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and len(steps) == len(set(steps)) + 2  # train+eval records at 4 and 8
    # a differently-initialised run is far away, so the comparison above can fail
    assert main(train_argv(preset, data, root / "other-seed", seed=1, grad_accum=2)) == 0
    other = _weights(root / "other-seed")
    assert max((other[n] - full[n]).abs().max().item() for n in full) > 1e-3


def test_eval_and_generate_on_the_run(finished_run, capsys):
    assert main(["eval", str(finished_run), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    result = json.loads((finished_run / "eval.json").read_text())
    assert "validation perplexity" in out and "unigram baseline" in out
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    assert 0 < result["bits_per_byte"] < 8 and result["perplexity"] < TINY_VOCAB  # better than uniform after 8 steps
    argv = ["generate", str(finished_run), "--prompt", "ROMEO:", "--max-new-tokens", "12", "--device", "cpu"]
    assert main(argv + ["--greedy"]) == 0
    greedy = capsys.readouterr().out
    assert greedy.startswith("ROMEO:") and len(greedy) > len("ROMEO:\n")
    assert main(argv + ["--greedy"]) == 0 and capsys.readouterr().out == greedy
    assert main(argv + ["--seed", "3", "--top-p", "0.9"]) == 0 and capsys.readouterr().out.startswith("ROMEO:")
    assert main(["eval", str(ckpt.list_checkpoints(finished_run)[0][1]), "--max-rows", "2"]) == 0


def _one_line_error(capsys, fragment):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0] and "Traceback" not in err[0], err


def test_cuda_graph_step_trains_as_the_eager_steps(setup, finished_run, monkeypatch):
    """``--cuda-graph``'s step (``GraphedTrainStep`` with the micro-batches inside, the scheduler after it) gives the
    eager loop's weights and metrics. Off CUDA it runs the recorded step's body eagerly, which is what is compared
    here; the recording itself is tested on the GPU (tests/train/test_graph_step.py)."""
    from wonderful_matrices.train import loop

    monkeypatch.setattr(loop, "_check_cuda_graph", lambda cfg, info: None)  # let it run on the CPU
    monkeypatch.setattr(loop, "make_capturable", lambda optimizer, device: None)  # capturable AdamW is CUDA-only
    calls = []
    real = loop._graphed_forward_backward_update
    monkeypatch.setattr(loop, "_graphed_forward_backward_update", lambda *a: calls.append(1) or real(*a))
    preset, data, root = setup
    out = root / "graph-path"
    assert main(train_argv(preset, data, out, grad_accum=2) + ["--cuda-graph"]) == 0
    assert len(calls) == 8
    graphed, full = _weights(out), _weights(finished_run)
    for name in full:
        torch.testing.assert_close(graphed[name], full[name], rtol=1e-6, atol=1e-7)

    def records(run):
        return [{k: v for k, v in json.loads(line).items() if k not in ("tokens_per_s", "elapsed_s")}
                for line in (run / "metrics.jsonl").read_text().splitlines()]
    got, want = records(out), records(finished_run)
    assert [r["kind"] for r in got] == [r["kind"] for r in want]
    for a, b in zip(got, want):
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-5) for k in a), (a, b)
    assert json.loads((out / "summary.json").read_text())["cuda_graph"] == "eager: not recorded yet"


def test_user_errors_exit_2_with_one_line(setup, finished_run, tmp_path, capsys):
    preset, data, root = setup
    assert main(["eval", str(tmp_path / "missing")]) == 2
    _one_line_error(capsys, "not found")
    assert main(["generate", str(tmp_path), "--prompt", "x"]) == 2
    _one_line_error(capsys, "has no checkpoint")
    (tmp_path / "empty.txt").write_text("\n\n")
    assert main(train_argv(preset, str(tmp_path / "empty.txt"), tmp_path / "r1")) == 2
    _one_line_error(capsys, "is empty")
    # a tokenizer with more tokens than the model's vocabulary
    from wonderful_matrices.data.tokenizer import train_bpe

    train_bpe([open(data).read()], TINY_VOCAB + 88, tmp_path / "big-tokenizer")
    assert main(train_argv(preset, data, tmp_path / "r2", tokenizer=tmp_path / "big-tokenizer")) == 2
    _one_line_error(capsys, f"{TINY_VOCAB + 88} tokens but the model's vocabulary has {TINY_VOCAB}")
    assert main(train_argv("no-such-preset", data, tmp_path / "r3")) == 2
    _one_line_error(capsys, "unknown preset 'no-such-preset'")
    assert main(train_argv(preset, data, tmp_path / "r4") + ["--cuda-graph"]) == 2
    _one_line_error(capsys, "--cuda-graph: needs one process on a CUDA device (this run has 1 on cpu)")
    assert not (tmp_path / "r4").exists()
    assert main(train_argv(preset, data, tmp_path / "r5") + ["--cuda-graph", "--fsdp"]) == 2
    _one_line_error(capsys, "--cuda-graph: not with --fsdp")
    # a run whose only checkpoint is damaged: eval refuses, training refuses to overwrite it
    broken = tmp_path / "broken"
    assert main(train_argv(preset, data, broken, max_steps=2, save_interval=2, eval_interval=2)) == 0
    weights = broken / "checkpoint-2" / "model.safetensors"
    weights.write_bytes(b"\0" * weights.stat().st_size)
    capsys.readouterr()
    assert main(["eval", str(broken)]) == 2
    assert "corrupted" in capsys.readouterr().err
    assert main(train_argv(preset, data, broken, max_steps=2, save_interval=2, eval_interval=2)) == 2
    assert weights.read_bytes() == b"\0" * weights.stat().st_size
    capsys.readouterr()
    assert main(train_argv(preset, data, finished_run, seq_len=16)) == 2
    _one_line_error(capsys, "seq_len=32")


def test_a_config_folder_works_as_preset(tmp_path):
    from transformers import LlamaConfig

    from wonderful_matrices.train.loop import build_model

    LlamaConfig(vocab_size=300, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1).save_pretrained(tmp_path)
    model = build_model(str(tmp_path))
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.vocab_size == 300
    assert type(build_model(TINY_PRESET)).__name__ == "CheemsForCausalLM"


def test_info_reports_versions_and_preset_sizes(capsys):
    from wonderful_matrices.train.loop import build_model

    assert main(["info", "--preset", TINY_PRESET]) == 0
    out = capsys.readouterr().out
    count = sum(p.numel() for p in build_model(TINY_PRESET).parameters())
    assert "torch " in out and "transformers " in out and f"preset {TINY_PRESET}: {count:,} parameters" in out
    assert main(["info", "--preset", "nope"]) == 2


def test_a_line_cut_short_by_a_kill_is_ignored(tmp_path):
    from wonderful_matrices.train.metrics import plot_losses, read_metrics

    (tmp_path / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "loss": 3.0}\n'
                                            '{"kind": "eval", "step": 1, "loss": 2.5}\n{"kind": "tra')
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 1]
    assert plot_losses(tmp_path).stat().st_size > 1000


def test_a_diverging_run_saves_no_checkpoint_of_non_finite_weights(setup, tmp_path, capsys):
    # the losses checked before a save were computed before the step's update, the weights saved after it: a run at
    # lr 30 wrote checkpoint-3 with non-finite weights, then said its checkpoints stopped before the divergence
    preset, data, _ = setup
    out = tmp_path / "diverged"
    argv = train_argv(preset, data, out, max_steps=30, lr=30, warmup=0, clip=0, save_interval=3, eval_interval=3,
                      log_interval=1)
    assert main(argv) == 2
    assert "became" in capsys.readouterr().err
    for _, folder in ckpt.list_checkpoints(out):
        weights = load_file(folder / "model.safetensors")
        assert all(torch.isfinite(w).all() for w in weights.values()), folder.name


def test_generate_refuses_non_finite_weights(finished_run, tmp_path, capsys):
    # a diverged model (saved by another tool: wm train no longer saves one) made sampling fail deep in torch
    import shutil

    model = ckpt.load_model(ckpt.latest_checkpoint(finished_run), torch.device("cpu"))
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")
    model.save_pretrained(tmp_path / "diverged")
    shutil.copytree(finished_run / "tokenizer", tmp_path / "diverged", dirs_exist_ok=True)
    assert main(["generate", str(tmp_path / "diverged"), "--prompt", "ROMEO:", "--device", "cpu"]) == 2
    _one_line_error(capsys, "the weights are not finite")
