"""``wm generate`` with several prompts (``--prompt`` repeated, ``--prompts-file``): one left-padded batch, each
sample printed, tokens/s reported; bad inputs are one-line errors."""
import pytest
import torch

import wonderful_matrices as wm
from wonderful_matrices.cli import generated_counts, left_padded_batch, main
from wonderful_matrices.data.tokenizer import train_bpe

TEXT = "ROMEO: But soft, what light through yonder window breaks?\nJULIET: O Romeo, Romeo!\n" * 20


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli-generate") / "model"
    tokenizer = train_bpe([TEXT], 300, folder)
    torch.manual_seed(0)
    model = wm.CheemsForCausalLM(wm.presets.get("cheems-tiny", vocab_size=len(tokenizer)))
    model.save_pretrained(folder)
    return folder


def _generate(model_dir, capsys, *flags):
    argv = ["generate", str(model_dir), "--max-new-tokens", "5", "--device", "cpu", "--threads", "1", *flags]
    status = main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def test_several_prompts_are_one_batch_with_the_tokens_of_each_alone(model_dir, tmp_path, capsys):
    prompts = ["ROMEO: But soft", "O", "JULIET: O Romeo, Romeo! wherefore"]
    alone = []
    for prompt in prompts:
        status, out, err = _generate(model_dir, capsys, "--greedy", "--prompt", prompt)
        assert status == 0 and out.startswith(prompt)
        assert "tokens/s" in err and "1 prompt " in err
        alone.append(out.rstrip("\n"))
    flags = [f for p in prompts for f in ("--prompt", p)]
    status, out, err = _generate(model_dir, capsys, "--greedy", *flags)
    assert status == 0 and "3 prompts" in err and "tokens/s" in err
    expected = "".join(f"--- sample {i}/3\n{text}\n" for i, text in enumerate(alone, 1))
    assert out == expected
    # the same prompts from a file (blank lines skipped), in batches of two, and after a --prompt
    (tmp_path / "prompts.txt").write_text("\n".join(prompts[1:]) + "\n\n")
    status, out_file, _ = _generate(model_dir, capsys, "--greedy", "--prompt", prompts[0], "--prompts-file",
                                    str(tmp_path / "prompts.txt"), "--batch-size", "2")
    assert status == 0 and out_file == expected
    status, out, err = _generate(model_dir, capsys, "--prompt", "ROMEO:", "--prompt", "", "--seed", "4")
    assert status == 0 and out.count("--- sample") == 2 and "2 prompts" in err


@pytest.mark.parametrize("flags, fragment", [
    (["--prompts-file", "MISSING"], "--prompts-file: cannot read"),
    (["--prompts-file", "BLANK"], "holds no prompt"),
    (["--batch-size", "0"], "--batch-size: got 0"),
    (["--max-new-tokens", "0"], "--max-new-tokens: got 0"),
    (["--prompts-file", "BINARY"], "--prompts-file: cannot read"),
    (["--prompt", "\udcff\udcfe"], "is not valid UTF-8 text"),  # how Python passes undecodable argv bytes
    (["--top-k", "-3"], "--top-k: got -3"),
    (["--temperature", "inf"], "--temperature: got inf"),
])
def test_bad_inputs_are_one_line_errors(model_dir, tmp_path, capsys, flags, fragment):
    (tmp_path / "BLANK").write_text("\n  \n")
    (tmp_path / "BINARY").write_bytes(b"\xff\xfe\x00binary")
    flags = [str(tmp_path / f) if f in ("MISSING", "BLANK", "BINARY") else f for f in flags]
    status, _, err = _generate(model_dir, capsys, *flags)
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and fragment in lines[0] and "Traceback" not in err


def test_batch_helpers():
    ids, mask = left_padded_batch([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert generated_counts(torch.tensor([[4, 9, 9], [2, 3, 4], [9, 9, 9]]), eos=9) == [2, 3, 1]


def test_a_prompt_of_no_tokens_starts_a_document(model_dir, tmp_path, capsys):
    """A prompt the tokenizer turns into no tokens (whitespace under a word-level tokenizer) generates from EOS
    alone, as an empty prompt does, not a traceback from an empty row."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers

    words = Tokenizer(models.WordLevel({"<eos>": 0, "[UNK]": 1, "hello": 2, "world": 3}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    words.add_special_tokens(["<eos>"])
    folder = tmp_path / "words"
    folder.mkdir()
    words.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>",
                                                              "tokenizer_class": "PreTrainedTokenizerFast"}))
    assert words.encode("  ").ids == []
    for prompts in (["  "], ["  ", "hello"]):
        flags = [flag for p in prompts for flag in ("--prompt", p)]
        status, out, err = _generate(model_dir, capsys, "--tokenizer", str(folder), *flags, "--greedy")
        samples = len(prompts) if len(prompts) > 1 else 0  # one prompt's text is printed without a header
        assert status == 0 and "Traceback" not in err and out.count("--- sample") == samples
