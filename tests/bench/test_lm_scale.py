"""``wm bench lm`` at scale (issue #15 item 1): one folder per (preset, seed), skipped when complete, resumed from
its checkpoint; perplexity at several contexts; the merge of the runs; the flags' one-line errors. Tiny presets,
two training steps, one play as the corpus."""
import json
import shutil

import numpy as np
import pytest
import torch

from conftest import cut_after_three_steps
from wonderful_matrices.bench import lm, lm_common, lm_scale
from wonderful_matrices.bench.__main__ import main
from wonderful_matrices.data.corpora import shakespeare_documents

TINY = dict(quick=True, size="tiny", vocab_size=300, seq_len=16, batch=2, eval_tokens=512, contexts=(1024,))


@pytest.fixture(scope="module")
def corpus_path(tmp_path_factory):
    """One play (~60 KB) as a local text corpus, with a shared tokenizer cache."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "play.txt").write_text(shakespeare_documents()[0][:60_000])
    return root


def _run(out, corpus_path, **overrides):
    options = dict(TINY, families=("cheems", "llama"), seeds=(0, 1), train_tokens=64, eval_contexts=(32, 64),
                   data=str(corpus_path / "play.txt"), cache_dir=corpus_path / "cache")
    return lm.run(out, **{**options, **overrides})


@pytest.fixture(scope="module")
def four_runs(tmp_path_factory, corpus_path):
    """cheems-tiny and llama-tiny, seeds 0 and 1, 64 training tokens each (2 steps of 2 x 16)."""
    out = tmp_path_factory.mktemp("runs")
    return out, _run(out, corpus_path)


def _cut_and_resumed(monkeypatch, train: dict, fresh, path, cut: dict | None = None, resume: dict | None = None):
    """A fresh model's ``train_lm`` (checkpoint every 2 steps at ``path``, with the options ``cut``) cut after 3 steps,
    then resumed by another fresh model (with ``resume``): returns the resumed model and its statistics."""
    saving = dict(checkpoint=path, checkpoint_every=2, facts={"run": 1})
    cut_after_three_steps(monkeypatch, lambda: lm_common.train_lm(fresh(), **train, **saving, **(cut or {})))
    assert torch.load(path, weights_only=False)["step"] == 2
    resumed = fresh()
    stats = lm_common.train_lm(resumed, **train, **saving, **(resume or {}))
    assert stats["resumed_at"] == 2
    return resumed, stats


def test_one_folder_per_run_with_its_results(four_runs):
    out, rows = four_runs
    names = ["cheems-tiny-seed0", "cheems-tiny-seed1", "llama-tiny-seed0", "llama-tiny-seed1"]
    assert sorted(p.name for p in out.iterdir() if p.name != "cache") == names
    assert [f"{r['preset']}-seed{r['seed']}" for r in rows] == names
    for name, row in zip(names, rows):
        data = json.loads((out / name / "results.json").read_text())
        assert data["experiment"] == "lm-run" and data["rows"] == [json.loads(json.dumps(row))]
        assert not (out / name / lm_scale.CHECKPOINT).exists()
        assert row["steps"] == 2 and row["train_tokens"] == 64 and data["meta"]["steps"] == 2
        assert row["resumed_at_step"] == 0 and row["cache_bytes@1024"] > 0
        # the same targets scored at every length; only rows longer than training give longer contexts
        assert row["scored@16"] == row["scored@32"] == row["scored@64"] == 512
        assert row["scored_beyond@16"] == 0 < row["scored_beyond@32"] < row["scored_beyond@64"] < 512
        for n in (16, 32, 64):
            assert 1.0 < row[f"val_ppl@{n}"] < 1e4
    # the seed changes the initial weights
    assert rows[0]["val_ppl@16"] != rows[1]["val_ppl@16"]


def test_complete_runs_are_skipped_and_other_settings_refused(four_runs, corpus_path, monkeypatch):
    out, rows = four_runs

    def no_training(*args, **kwargs):
        raise AssertionError("a complete run was trained again")

    monkeypatch.setattr(lm_scale, "train_lm", no_training)
    again = _run(out, corpus_path, families=("llama",), seeds=(1,))
    assert again == [json.loads(json.dumps(rows[3]))]
    with pytest.raises(ValueError, match=r"llama-tiny-seed1 holds a run with steps=2, this one has 3"):
        _run(out, corpus_path, families=("llama",), seeds=(1,), train_tokens=96)


def test_eval_prefix_is_a_whole_number_of_the_longest_rows():
    assert lm_scale.eval_prefix(1000, 10_000, (16, 64)) == 961
    assert lm_scale.eval_prefix(None, 200, (16, 64)) == 193
    with pytest.raises(ValueError, match="eval_contexts=\\[16, 64\\] is not allowed"):
        lm_scale.eval_prefix(50, 10_000, (16, 64))
    with pytest.raises(ValueError, match="must divide the longest"):  # rows of 24 would score other targets
        lm_scale.eval_prefix(None, 10_000, (16, 24))
    assert lm_scale.steps_for(64, 2, 16) == 2 and lm_scale.steps_for(65, 2, 16) == 3


def _tiny_training(low: int, steps: int):
    """``train_lm``'s keyword arguments for cheems-tiny on random ids in ``[low, 64)`` (id 0 is EOS: ``low = 0``
    makes packed rows) and a function giving the same fresh model each time."""
    from wonderful_matrices.models import CheemsForCausalLM, presets

    config = presets.get("cheems-tiny", vocab_size=64, use_cache=False)
    tokens = np.random.default_rng(0).integers(low, 64, 2000).astype(np.int64)

    def fresh():
        torch.manual_seed(3)
        return CheemsForCausalLM(config)

    return dict(tokens=tokens, seq_len=16, batch=2, steps=steps, lr=1e-3, device=torch.device("cpu"), seed=3,
                eos=0), fresh


def test_interrupted_training_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    """Cut after 3 of 5 steps (checkpoint at step 2): the resumed run ends with the weights of an uninterrupted
    one; a finished run's checkpoint returns it without training; a checkpoint of other facts is refused."""
    train, fresh = _tiny_training(1, 5)
    reference = fresh()
    reference_stats = lm_common.train_lm(reference, **train)
    path = tmp_path / "checkpoint.pt"
    resumed, stats = _cut_and_resumed(monkeypatch, train, fresh, path)
    for a, b in zip(resumed.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # the resumed run's losses are the uninterrupted run's, the ones before the cut read from the checkpoint
    assert stats["losses"] == reference_stats["losses"] and len(stats["losses"]) == 5
    assert stats["diverged_at"] is None and stats["steps_run"] == 5
    # the final checkpoint (saved before the evaluation) gives the finished run back without a step

    def no_step(*args, **kwargs):
        raise AssertionError("a finished run trained again")

    monkeypatch.setattr(lm_common, "optimizer_step", no_step)
    restored = fresh()
    assert lm_common.train_lm(restored, **train, checkpoint=path, checkpoint_every=2, facts={"run": 1}) == stats
    for a, b in zip(restored.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"it holds a run with run=1, this run has 2"):
        lm_common.train_lm(fresh(), **train, checkpoint=path, checkpoint_every=2, facts={"run": 2})


def test_merge_means_spread_and_per_seed_rows(four_runs, tmp_path):
    out, rows = four_runs
    merged = lm_scale.merge_results(tmp_path / "merged", [out])
    assert [(r["preset"], r["runs"]) for r in merged] == [
        ("cheems-tiny", "mean of 2"), ("llama-tiny", "mean of 2"), ("cheems-tiny", "seed 0"),
        ("cheems-tiny", "seed 1"), ("llama-tiny", "seed 0"), ("llama-tiny", "seed 1")]
    for summary, runs in ((merged[0], rows[:2]), (merged[1], rows[2:])):
        for n in (16, 32, 64):
            vals = [r[f"val_ppl@{n}"] for r in runs]
            assert summary[f"val_ppl@{n}"] == pytest.approx(np.mean(vals), rel=1e-12)
            assert summary[f"val_ppl@{n}_spread"] == pytest.approx(max(vals) - min(vals), rel=1e-12)
        assert summary["train_tokens_per_s"] == pytest.approx(np.mean([r["train_tokens_per_s"] for r in runs]))
    assert merged[1]["cache_vs_llama@1024"] == 1.0 and merged[0]["cache_vs_llama@1024"] < 1.0
    data = json.loads((tmp_path / "merged" / "results.json").read_text())
    md = (tmp_path / "merged" / "results.md").read_text()
    assert data["experiment"] == "lm-scale" and len(data["meta"]["merged_from"]) == 4
    assert "val_ppl@64_spread" in md and "512 scored" in md
    # run folders named one by one merge the same way; one seed has no spread
    single = lm_scale.merge_results(tmp_path / "one", [out / "cheems-tiny-seed1"])
    assert single[0]["runs"] == "mean of 1" and single[0]["val_ppl@16_spread"] is None


@pytest.mark.parametrize("key, value", [("tokenizer_sha256", "0" * 64), ("corpus_fingerprint", "other"),
                                        ("steps", 7), ("precision", "bf16 autocast")])
def test_merge_refuses_runs_of_another_corpus_tokenizer_or_budget(four_runs, tmp_path, key, value):
    out, _ = four_runs
    other = tmp_path / "other" / "doge-tiny-seed0"
    other.mkdir(parents=True)
    data = json.loads((out / "llama-tiny-seed0" / "results.json").read_text())
    data["meta"].update({key: value, "preset": "doge-tiny"})
    (other / "results.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"doge-tiny-seed0'? is not allowed: its {key}="):
        lm_scale.merge_results(tmp_path / "merged", [out, other.parent])


def test_merge_refuses_the_same_run_twice(four_runs, tmp_path):
    out, _ = four_runs
    with pytest.raises(ValueError, match="cheems-tiny seed 0 is also in"):
        lm_scale.merge_results(tmp_path / "merged", [out, out / "cheems-tiny-seed0"])


def test_merge_and_runs_refuse_other_experiments(four_runs, tmp_path):
    out, _ = four_runs
    other = tmp_path / "mqar-results"
    other.mkdir()
    (other / "results.json").write_text(json.dumps({"experiment": "mqar", "meta": {}, "rows": []}))
    with pytest.raises(ValueError, match=r"merge=.*mqar-results'? is not allowed: it holds 'mqar' results"):
        lm_scale.merge_results(tmp_path / "merged", [out, other])
    with pytest.raises(ValueError, match=r"out=.*mqar-results'? is not allowed: it holds 'mqar' results"):
        lm_scale._read_run(other)


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "x"], "error: seeds='x' is not allowed: integers >= 0"),
    (["--seeds", "0", "0"], "error: seeds=[0, 0] is not allowed: each seed once"),
    (["--train-tokens", "0"], "error: train-tokens='0' is not allowed: integers >= 1"),
    (["--eval-contexts", "2048", "-5"], "error: eval-contexts='2048 -5' is not allowed: integers >= 1"),
    (["--families", "cheems,gpt"], "error: families=['cheems', 'gpt'] is not allowed: one or more of"),
    (["--train-tokens", "64", "--steps", "3"], "error: steps=3 is not allowed with train_tokens=64"),
    (["--hybrid-ratio", "0"], "error: hybrid-ratio='0' is not allowed: integers >= 1"),
    (["--eval-contexts", "100"], "error: eval_contexts=[100, 128] is not allowed (with the training length): every"),
])
def test_bad_flags_are_one_line_errors(tmp_path, capsys, argv, message):
    assert main(["lm", "--quick", "--out", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_merge_flag_errors(tmp_path, capsys):
    assert main(["lm", "--out", str(tmp_path / "m"), "--merge", str(tmp_path)]) == 2
    assert "holds no results.json, nor folders with one" in capsys.readouterr().err
    assert main(["mqar", "--quick", "--out", str(tmp_path), "--seeds", "0"]) == 2
    assert "seeds=(0,) is not allowed: benchmark 'mqar' takes" in capsys.readouterr().err


def test_eval_contexts_in_the_single_folder_layout(tmp_path, corpus_path):
    """Without --seeds / --train-tokens, lm keeps its one results.json and adds a val_ppl@C column per context."""
    rows = lm.run(tmp_path, steps=2, families=("llama",), data=str(corpus_path / "play.txt"),
                  cache_dir=corpus_path / "cache", throughput_lengths=(16,), eval_contexts=(32, 64),
                  **dict(TINY, contexts=(40,), eval_tokens=256))
    assert len(rows) == 1 and rows[0]["context"] == 40 and (tmp_path / "results.json").exists()
    assert not any(p.name.startswith("llama-tiny-seed") for p in tmp_path.iterdir())
    assert 1.0 < rows[0]["val_ppl@32"] < 1e4 and 1.0 < rows[0]["val_ppl@64"] < 1e4
    assert "val_ppl@64" in (tmp_path / "results.md").read_text()


def test_a_context_out_of_memory_is_recorded_and_merged_as_missing(tmp_path, corpus_path, monkeypatch):
    real = lm_scale.scored_perplexity

    def oom_at_64(model, tokens, length, *args, **kwargs):
        if length == 64:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(model, tokens, length, *args, **kwargs)

    monkeypatch.setattr(lm_scale, "scored_perplexity", oom_at_64)
    row, = _run(tmp_path / "runs", corpus_path, families=("llama",), seeds=(0,))
    assert row["val_ppl@64"] is None and row["eval_error@64"] == "out of memory" and row["val_ppl@32"] > 1
    merged = lm_scale.merge_results(tmp_path / "merged", [tmp_path / "runs"])
    assert merged[0]["val_ppl@64"] is None and merged[0]["val_ppl@32"] == row["val_ppl@32"]


def test_compiled_training_resumes_and_follows_the_eager_one(tmp_path, monkeypatch):
    """``train_lm(compiled=True)`` on packed rows (EOS ids among the tokens: a new document layout every step): one
    compiled graph for all steps, the weights of the eager training, and a run cut after 3 of 5 steps resumes
    compiled from its checkpoint (aot_eager: Dynamo and AOTAutograd as Inductor gets them, in seconds)."""
    from torch._dynamo.utils import counters

    monkeypatch.setattr(lm_common, "compiled_lm_loss", lambda: lm_common.torch.compile(
        lm_common.lm_loss, dynamic=False, backend="aot_eager", fullgraph=True))
    train, fresh = _tiny_training(0, 5)  # id 0 (EOS) about every 64 tokens
    reference = fresh()
    eager_stats = lm_common.train_lm(reference, **train)
    torch._dynamo.reset()
    counters.clear()
    whole = fresh()
    stats = lm_common.train_lm(whole, **train, compiled=True)
    assert counters["stats"]["unique_graphs"] == 1
    assert stats["final_loss"] == pytest.approx(eager_stats["final_loss"], rel=1e-5)
    for a, b in zip(whole.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)

    resumed, _ = _cut_and_resumed(monkeypatch, train, fresh, tmp_path / "checkpoint.pt", dict(compiled=True),
                                  dict(compiled=True))
    for a, b in zip(resumed.parameters(), whole.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_compiled_training_falls_back_to_eager_when_the_compiler_fails(monkeypatch):
    """A compiler failure on the first compiled step (Inductor's code generation failed on cheems-base's packed rows
    in session 19 and the whole GPU call was lost) leaves the run training eagerly from that step: the weights of the
    eager training, ``compiled`` False and the error in one line; a failure on a later step is raised."""
    calls = []

    def failing_compiler():
        def loss(*args):
            calls.append(len(calls))
            raise torch._dynamo.exc.TorchDynamoException("inductor: list indices must be integers")
        return loss

    monkeypatch.setattr(lm_common, "compiled_lm_loss", failing_compiler)
    train, fresh = _tiny_training(0, 4)
    reference = fresh()
    eager_stats = lm_common.train_lm(reference, **train)
    assert eager_stats["compiled"] is False and eager_stats["compile_error"] is None
    fallen_back = fresh()
    stats = lm_common.train_lm(fallen_back, **train, compiled=True)
    assert calls == [0] and stats["compiled"] is False
    assert stats["compile_error"] == "TorchDynamoException: inductor: list indices must be integers"
    assert stats["final_loss"] == eager_stats["final_loss"]
    for a, b in zip(fallen_back.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    def fails_on_the_second_step(*args):
        calls.append(len(calls))
        if len(calls) > 2:
            raise torch._dynamo.exc.TorchDynamoException("a recompilation failed")
        return lm_common.lm_loss(*args)

    monkeypatch.setattr(lm_common, "compiled_lm_loss", lambda: fails_on_the_second_step)
    with pytest.raises(torch._dynamo.exc.TorchDynamoException, match="recompilation"):
        lm_common.train_lm(fresh(), **train, compiled=True)


def test_graphed_training_is_the_eager_training_and_resumes_either_way(tmp_path, monkeypatch):
    """``train_lm(graphed=True)`` runs every step through ``GraphedTrainStep`` (on the CPU its eager body; the
    recording is tested on the GPU): the eager training's weights and loss; a graphed run cut after 3 of 5 steps
    resumes eagerly from its checkpoint, and an eager one graphed, to the same weights."""
    train, fresh = _tiny_training(0, 5)
    reference = fresh()
    eager_stats = lm_common.train_lm(reference, **train)
    calls = []
    real_call = lm_common.GraphedTrainStep.__call__
    monkeypatch.setattr(lm_common.GraphedTrainStep, "__call__", lambda self, *a: calls.append(1) or real_call(self, *a))
    graphed = fresh()
    stats = lm_common.train_lm(graphed, **train, graphed=True)
    assert len(calls) == 5 and stats["graphed"] is False and stats["graph_error"] is None  # no graph on the CPU
    assert stats["final_loss"] == pytest.approx(eager_stats["final_loss"], rel=1e-6)
    for a, b in zip(graphed.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)

    for first, then in ((True, False), (False, True)):
        resumed, _ = _cut_and_resumed(monkeypatch, train, fresh, tmp_path / f"checkpoint-{first}.pt",
                                      dict(graphed=first), dict(graphed=then))
        for a, b in zip(resumed.parameters(), reference.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_compiled_training_flag_reaches_every_run(tmp_path, corpus_path, monkeypatch):
    seen = []

    def record(*args, compiled=False, graphed=False, **kwargs):
        seen.append((compiled, graphed))
        return {"final_loss": 1.0, "tokens_per_s": 1.0, "peak_memory_bytes": None, "train_s": 0.0, "resumed_at": 0,
                "graphed": graphed, "losses": [1.0, 1.0], "diverged_at": None, "steps_run": 2}

    monkeypatch.setattr(lm_scale, "train_lm", record)
    assert main(["lm", "--quick", "--out", str(tmp_path / "runs"), "--families", "llama", "--seeds", "0",
                 "--train-tokens", "64", "--data", str(corpus_path / "play.txt"), "--vocab-size", "300",
                 "--eval-tokens", "256", "--compiled-training", "--graphed-training"]) == 0
    assert seen == [(True, True)]
    row = json.loads((tmp_path / "runs" / "llama-small-seed0" / "results.json").read_text())["rows"][0]
    assert row["compiled_training"] is True and row["graphed_training"] is True
    merged = lm_scale.merge_results(tmp_path / "merged", [tmp_path / "runs"])
    assert merged[0]["compiled_training"] is True and merged[0]["graphed_training"] is True


def test_hybrid_ratio_names_its_runs_and_merges_beside_the_presets(four_runs, corpus_path, tmp_path, monkeypatch):
    fixture_out, rows = four_runs
    out = tmp_path / "runs"
    shutil.copytree(fixture_out, out)  # the fixture's folder stays as the other tests expect it
    assert [r["mixers"] for r in rows] == ["3 ssd + 1 dma"] * 2 + ["4 attn"] * 2
    assert lm_scale.run_label("cheems", "base", 3) == "cheems-base-3to1"
    assert lm_scale.run_label("cheems", "base", 7) == lm_scale.run_label("cheems", "base") == "cheems-base"
    assert lm_scale.run_label("llama", "base", 3) == "llama-base"
    real_train, trained = lm_scale.train_lm, []

    def count(*args, **kwargs):
        trained.append(1)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(lm_scale, "train_lm", count)
    ratio_rows = _run(out, corpus_path, seeds=(0,), hybrid_ratio=1)
    assert trained == [1]  # llama-tiny-seed0 is the fixture's complete run: skipped
    assert [r["preset"] for r in ratio_rows] == ["cheems-tiny-1to1", "llama-tiny"]
    assert ratio_rows[0]["mixers"] == "2 ssd + 2 dma"
    assert json.loads(json.dumps(ratio_rows[1])) == json.loads(json.dumps(rows[2]))
    assert (out / "cheems-tiny-1to1-seed0" / "results.json").exists()
    merged = lm_scale.merge_results(tmp_path / "merged", [out])
    means = [r for r in merged if r["runs"].startswith("mean")]
    assert [r["preset"] for r in means] == ["cheems-tiny", "cheems-tiny-1to1", "llama-tiny"]
    assert [r["mixers"] for r in means] == ["3 ssd + 1 dma", "2 ssd + 2 dma", "4 attn"]


def _diverging_at_step_3(monkeypatch) -> None:
    """From its third call on, the training loss is NaN (as a diverged run's)."""
    real, calls = lm_common.training_loss, []

    def loss(*args, **kwargs):
        calls.append(1)
        value = real(*args, **kwargs)
        return value * float("nan") if len(calls) >= 3 else value

    monkeypatch.setattr(lm_common, "training_loss", loss)


def test_a_diverged_training_stops_at_its_next_checkpoint_without_saving(tmp_path, monkeypatch):
    """A non-finite loss ends the training at the next checkpoint (session 23's lm-scale runs trained all their steps
    with NaN losses and evaluated NaN weights); the checkpoint before the divergence is the one kept."""
    train, fresh = _tiny_training(1, 8)
    _diverging_at_step_3(monkeypatch)
    path = tmp_path / "checkpoint.pt"
    stats = lm_common.train_lm(fresh(), **train, checkpoint=path, checkpoint_every=2, facts={"run": 1})
    assert stats["diverged_at"] == 3 and stats["steps_run"] == 4 and len(stats["losses"]) == 4
    assert all(np.isfinite(stats["losses"][:2])) and not any(np.isfinite(stats["losses"][2:]))
    assert torch.load(path, weights_only=False)["step"] == 2  # not the diverged step 4, nor a final save


def test_a_diverged_run_is_recorded_as_such_and_merged(tmp_path, corpus_path, monkeypatch):
    out = tmp_path / "runs"
    (row,) = _run(out, corpus_path, families=("llama",), seeds=(0,), train_tokens=64 * 4)
    assert row["diverged_at_step"] is None and len(row["train_losses"]) == 8 and row["val_ppl@64"] > 1
    _diverging_at_step_3(monkeypatch)
    (bad,) = _run(out, corpus_path, families=("llama",), seeds=(1,), train_tokens=64 * 4)
    assert bad["diverged_at_step"] == 3 and bad["val_ppl@64"] is None
    assert bad["eval_error@64"] == "training diverged at step 3"
    merged = lm_scale.merge_results(tmp_path / "merged", [out])
    assert merged[0]["diverged_at_step"] == "seed 1 at step 3" and merged[0]["val_ppl@64"] is None
    assert (tmp_path / "merged" / "loss.png").stat().st_size > 1000


def test_lr_flag_sets_every_runs_learning_rate(tmp_path, corpus_path, monkeypatch, capsys):
    seen = []

    def record(model, tokens, seq_len, batch, steps, lr, *args, **kwargs):
        seen.append(lr)
        return {"final_loss": 1.0, "tokens_per_s": 1.0, "peak_memory_bytes": None, "train_s": 0.0, "resumed_at": 0,
                "graphed": False, "losses": [1.0, 1.0], "diverged_at": None, "steps_run": 2}

    monkeypatch.setattr(lm_scale, "train_lm", record)
    flags = ["lm", "--quick", "--out", str(tmp_path / "runs"), "--families", "llama", "--seeds", "0", "--train-tokens",
             "64", "--data", str(corpus_path / "play.txt"), "--vocab-size", "300", "--eval-tokens", "256"]
    assert main(flags + ["--lr", "3e-4"]) == 0
    assert seen == [3e-4]
    meta = json.loads((tmp_path / "runs" / "llama-small-seed0" / "results.json").read_text())["meta"]
    assert meta["lr"] == 3e-4 and "lr 0.0003" in meta["training"]
    for bad, said in (("0", "lr=0.0"), ("-1e-3", "lr=-0.001"), ("inf", "lr=inf"), ("fast", "lr='fast'")):
        assert main(flags + [f"--lr={bad}"]) == 2
        assert f"{said} is not allowed" in capsys.readouterr().err


def test_merge_names_each_runs_device_and_does_not_average_throughputs_of_two(four_runs, tmp_path):
    """The runs of one table come from calls on whichever GPU was lent (H100 or H200): a seed measured on another
    device is named, and its preset gets no mean throughput (it was averaged, under the merging machine's name)."""
    out, rows = four_runs
    runs = tmp_path / "runs"
    shutil.copytree(out, runs, ignore=shutil.ignore_patterns("cache"))
    path = runs / "llama-tiny-seed1" / "results.json"
    data = json.loads(path.read_text())
    here = data["environment"]["device"]
    data["environment"]["device"] = "NVIDIA H200"
    path.write_text(json.dumps(data))
    merged = lm_scale.merge_results(tmp_path / "merged", [runs])
    cheems, llama = merged[0], merged[1]
    assert cheems["device"] == here and cheems["train_tokens_per_s"] == pytest.approx(
        np.mean([r["train_tokens_per_s"] for r in rows[:2]]))
    assert llama["device"] == "mixed" and llama["train_tokens_per_s"] is None
    assert [r["device"] for r in merged[2:]] == [here, here, here, "NVIDIA H200"]
    assert json.loads((tmp_path / "merged" / "results.json").read_text())["meta"]["devices"] == sorted(
        {here, "NVIDIA H200"})
    assert "ran on 2 devices" in (tmp_path / "merged" / "results.md").read_text()
