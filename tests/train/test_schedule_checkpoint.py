import math

import pytest
import torch
from safetensors.torch import load_file

from wonderful_matrices.errors import UserError
from wonderful_matrices.train import checkpoint as ckpt
from wonderful_matrices.train.schedule import lr_multiplier


def test_wsd_schedule():
    f = lr_multiplier("wsd", total_steps=100, warmup_steps=10, decay_steps=20, min_ratio=0.1)
    assert [f(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert f(10) == f(50) == f(79) == 1.0
    assert f(89) == pytest.approx(1 - 0.9 * 0.5)
    assert f(99) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(10, 99))


def test_cosine_schedule():
    f = lr_multiplier("cosine", total_steps=50, warmup_steps=5, min_ratio=0.0)
    assert f(4) == 1.0
    assert f(5 + 22) == pytest.approx(0.5 * (1 + math.cos(math.pi * 23 / 45)))
    assert f(49) == pytest.approx(0.0, abs=1e-12)
    g = lr_multiplier("constant", total_steps=10, warmup_steps=0)
    assert {g(s) for s in range(11)} == {1.0}
    h = lr_multiplier("wsd", total_steps=10, warmup_steps=2, decay_steps=0)
    assert h(9) == h(10) == 1.0  # LambdaLR also evaluates the step after the last


@pytest.mark.parametrize("args", [("linear", 10, 1), ("wsd", 0, 0), ("wsd", 10, 11), ("wsd", 10, 5, 6)])
def test_schedule_rejects_bad_arguments(args):
    with pytest.raises(UserError):
        lr_multiplier(*args)


def _tiny_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True))


def _save(run, step, model):
    state = {"optimizer": {"state": {"w": {"exp_avg": torch.randn(3)}}}, "step": step, "rng": [torch.get_rng_state()]}
    return ckpt.save_checkpoint(run, step, model, model.state_dict(), state, {"step": step}, keep_last=2)


def test_save_load_prune_and_latest_pointer(tmp_path):
    model = _tiny_model()
    for step in (1, 2, 3):
        with torch.no_grad():
            model.model.embed_tokens.weight.add_(1.0)
        folder = _save(tmp_path, step, model)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [2, 3]
    assert (tmp_path / "latest").read_text().strip() == "checkpoint-3"
    assert ckpt.latest_checkpoint(tmp_path) == folder
    state = ckpt.load_trainer_state(folder)
    assert state["step"] == 3 and state["optimizer"]["state"]["w"]["exp_avg"].shape == (3,)
    loaded = ckpt.load_model(folder)
    assert torch.equal(loaded.model.embed_tokens.weight, model.model.embed_tokens.weight)
    assert "model.embed_tokens.weight" in load_file(folder / "model.safetensors")
    assert not list(tmp_path.glob(".tmp-*"))


def test_corrupted_newest_is_skipped_and_never_replaces_a_good_one(tmp_path, capsys):
    model = _tiny_model()
    _save(tmp_path, 1, model)
    good = _save(tmp_path, 2, model)
    weights = good / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated by a crash of the disk, say
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "checkpoint-1"
    assert "skipping corrupted checkpoint" in capsys.readouterr().out
    # a half-written temp folder from a killed save is ignored, then cleaned by the next save
    (tmp_path / ".tmp-checkpoint-3-xyz").mkdir()
    (tmp_path / "checkpoint-4").mkdir()  # no manifest: incomplete
    assert ckpt.latest_checkpoint(tmp_path, warn=lambda m: None) == tmp_path / "checkpoint-1"
    # saving step 2 again replaces the damaged copy by a verified one
    again = _save(tmp_path, 2, model)
    ckpt.verify_checkpoint(again)
    assert not (tmp_path / ".tmp-checkpoint-3-xyz").exists()


def test_all_corrupted_is_a_user_error(tmp_path):
    folder = _save(tmp_path, 5, _tiny_model())
    (folder / ckpt.MANIFEST).write_text("{not json")
    with pytest.raises(UserError, match="no loadable checkpoint.*checkpoint-5"):
        ckpt.latest_checkpoint(tmp_path, warn=lambda m: None)
    assert ckpt.latest_checkpoint(tmp_path / "nothing-here") is None


def test_an_interrupted_save_keeps_the_good_checkpoint_behind_a_damaged_newer_one(tmp_path, monkeypatch):
    """checkpoint-3 complete, checkpoint-5 damaged: a run resumes from 3; if its next save is interrupted (Ctrl-C,
    a full disk), the pruning before it must not have deleted 3 in favour of the damaged 5."""
    model = _tiny_model()
    _save(tmp_path, 3, model)
    damaged = _save(tmp_path, 5, model)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert ckpt.latest_checkpoint(tmp_path, warn=lambda m: None) == tmp_path / "checkpoint-3"  # resume from 3

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, 4, model)
    monkeypatch.undo()
    assert ckpt.latest_checkpoint(tmp_path, warn=lambda m: None) == tmp_path / "checkpoint-3"
    assert not list(tmp_path.glob(".tmp-*"))


def test_an_unreadable_trainer_state_is_a_user_error(tmp_path):
    folder = _save(tmp_path, 1, _tiny_model())
    (folder / ckpt.TRAINER_STATE).write_bytes(b"PK\x03\x04 not a zip archive at all")
    with pytest.raises(UserError, match="cannot read .*trainer_state.pt"):
        ckpt.load_trainer_state(folder)


def test_a_save_clears_a_latest_pointer_cut_short(tmp_path):
    # a kill while the latest pointer was rewritten left its temporary file, which no later save removed
    model = _tiny_model()
    _save(tmp_path, 1, model)
    (tmp_path / ".latest.abc123.tmp").write_text("checkpoint-")
    _save(tmp_path, 2, model)
    assert not list(tmp_path.glob(".latest.*.tmp"))
    assert (tmp_path / "latest").read_text().strip() == "checkpoint-2"
