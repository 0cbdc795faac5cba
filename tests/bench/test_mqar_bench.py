"""MQAR benchmark: the harness trains a 2-layer attention model to solve small MQAR; the quick path's files."""
import json

import pytest
import torch

from wonderful_matrices.bench import mqar as bench_mqar
from wonderful_matrices.data.mqar import mqar


@pytest.mark.slow  # ~600 steps: 20-40 s on 2 idle cores, minutes on a loaded machine
def test_attention_learns_small_mqar():
    # docs/design.md: a 2-layer, 1-head attention model of width 64 solves (T=64, 4 pairs, vocab 256)
    train = mqar(16_000, 64, 4, 256, seed=1)
    test = mqar(256, 64, 4, 256, seed=2)
    model = bench_mqar.build_model("attn", 64, 256, 16, torch.device("cpu"), seed=0)
    result = bench_mqar.train_and_evaluate(model, train, test, lr=3e-3, steps=600, batch_size=64,
                                           device=torch.device("cpu"))
    assert result["accuracy"] >= 0.99, result


def test_quick_path_writes_well_formed_results(tmp_path):
    cells = ((16, 2, 16),)
    rows = bench_mqar.run(tmp_path, quick=True, cells=cells, steps=3, vocab_size=32, state_size=8, batch_size=4,
                          num_test=8, learning_rates=(1e-3, 1e-2))
    assert len(rows) == len(bench_mqar.MIXERS)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["experiment"] == "mqar" and len(data["rows"]) == 3
    for row in data["rows"]:
        assert 0.0 <= row["accuracy"] <= 1.0
        assert row["steps"] == 3 and row["mixer"] in bench_mqar.MIXERS
        assert set(row["lr_accuracy"]) <= {"1.00e-03", "1.00e-02"}
    assert all(r["examples_seen"] == 12 for r in data["rows"])
    md = (tmp_path / "results.md").read_text()
    assert "| seq_len |" in md and "DMA" in md and "QCAttn" in md
    assert (tmp_path / "mqar.png").stat().st_size > 1000


def test_model_configs_are_the_stated_ones():
    for mixer in bench_mqar.MIXERS:
        cfg = bench_mqar.model_config(mixer, 64, 256, 128)
        assert cfg.layer_types == [mixer] * 2 and cfg.ffn_types == ["none"] * 2
    ssd = bench_mqar.model_config("ssd", 128, 8192, 128)
    assert ssd.ssd_state_size == 128 and ssd.ssd_num_heads * ssd.ssd_head_dim == 256
    dma = bench_mqar.model_config("dma", 128, 8192)
    assert dma.keep_window is None and dma.num_attention_heads == 1


def test_cells_argument():
    assert bench_mqar.parse_cells("256:64,2048:128") == ((256, 16, 64), (2048, 256, 128))
    for bad in ("256x64", "300:64", "256:0"):
        with pytest.raises(ValueError, match="cells"):
            bench_mqar.parse_cells(bad)


def test_labelled_logits_are_the_full_logits_at_the_labelled_positions():
    inputs, labels = mqar(3, 32, 4, 64, seed=5)
    model = bench_mqar.build_model("attn", 16, 64, 8, torch.device("cpu"), seed=0).eval()
    with torch.no_grad():
        logits, targets = bench_mqar.labelled_logits(model, inputs, labels)
        full = model(input_ids=inputs, use_cache=False).logits
    mask = labels != -100
    assert logits.shape == (int(mask.sum()), 64) and torch.equal(targets, labels[mask])
    torch.testing.assert_close(logits, full[mask], rtol=1e-5, atol=1e-5)
    # the fixed-shape selection (every MQAR row has num_kv_pairs labels) picks the same positions in the same order
    assert bench_mqar.labels_per_row(labels) == 4
    with torch.no_grad():
        fixed, fixed_targets = bench_mqar.labelled_logits(model, inputs, labels, per_row=4)
    assert torch.equal(fixed_targets, targets)
    torch.testing.assert_close(fixed, logits, rtol=1e-6, atol=1e-6)
    uneven = labels.clone()
    uneven[0, (uneven[0] != -100).nonzero()[0]] = -100
    assert bench_mqar.labels_per_row(uneven) is None


def test_no_run_starts_after_the_budget_and_the_files_say_so(tmp_path):
    # a budget spent by the calibration: every row stays without an accuracy, and the files are still written
    rows = bench_mqar.run(tmp_path, quick=True, cells=((16, 2, 16),), budget_s=1e-3, vocab_size=32, state_size=8,
                          batch_size=4, num_test=8, learning_rates=(1e-3, 1e-2))
    assert [r["accuracy"] for r in rows] == [None] * 3 and all(r["lr_accuracy"] == {} for r in rows)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["meta"]["lr_order"] == ["1.00e-02", "1.00e-03"] and len(data["rows"]) == 3  # nearest 4.6e-3 first
    assert (tmp_path / "mqar.png").exists()


def test_runs_split_by_mixer_and_learning_rate_merge_into_the_whole_sweep(tmp_path):
    small = dict(quick=True, cells=((16, 2, 16),), steps=3, vocab_size=32, state_size=8, batch_size=4, num_test=8)
    whole = bench_mqar.run(tmp_path / "whole", learning_rates=(1e-3, 1e-2), **small)
    bench_mqar.run(tmp_path / "a", mixers="attn,ssd", learning_rates="1e-3", **small)
    bench_mqar.run(tmp_path / "b", mixers="attn,ssd", learning_rates="1e-2", **small)
    bench_mqar.run(tmp_path / "c", mixers="dma", learning_rates="1e-3,1e-2", **small)
    merged = bench_mqar.merge_results(tmp_path / "merged", [tmp_path / p for p in "abc"])
    key = lambda r: (r["mixer"], r["accuracy"], r["best_lr"], r["lr_accuracy"])  # noqa: E731
    assert [key(r) for r in merged] == [key(r) for r in whole]
    assert json.loads((tmp_path / "merged" / "results.json").read_text())["meta"]["merged_from"][0].endswith("a")
    # parts that do not belong together are refused
    bench_mqar.run(tmp_path / "other", mixers="dma", learning_rates="1e-3", **dict(small, vocab_size=64))
    with pytest.raises(ValueError, match="vocab_size"):
        bench_mqar.merge_results(tmp_path / "bad", [tmp_path / "a", tmp_path / "other"])
    with pytest.raises(ValueError, match="results.json"):
        bench_mqar.merge_results(tmp_path / "bad", [tmp_path / "nothing-here"])
    with pytest.raises(ValueError, match="learning_rates"):
        bench_mqar.run(tmp_path / "x", learning_rates="fast", **small)


def test_wm_bench_merge(tmp_path):
    from wonderful_matrices.cli import main

    bench_mqar.run(tmp_path / "a", quick=True, cells=((16, 2, 16),), steps=2, vocab_size=32, state_size=8, batch_size=4,
                   num_test=8, learning_rates=(1e-3,))
    assert main(["bench", "mqar", "--merge", str(tmp_path / "a"), "--out", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "mqar.png").exists()
    assert main(["bench", "lm", "--merge", str(tmp_path / "a"), "--out", str(tmp_path / "m")]) == 2


def test_default_rates_run_in_the_measured_order_of_promise(tmp_path):
    bench_mqar.run(tmp_path, cells=((16, 2, 16),), budget_s=1e-3, vocab_size=32, state_size=8, batch_size=4,
                   num_test=8)
    order = json.loads((tmp_path / "results.json").read_text())["meta"]["lr_order"]
    assert order == ["2.15e-03", "1.00e-02", "4.64e-04", "1.00e-04"]


def test_full_scale_defaults_follow_zoology_and_quick_keeps_its_own(tmp_path):
    # full runs: tied embeddings, 65536-token batches (at most 512 rows); --quick: untied, 64 rows
    assert [bench_mqar.full_batch_size(t) for t in (64, 256, 512, 1024, 2048)] == [512, 256, 128, 64, 32]
    small = dict(cells=((64, 4, 16),), steps=2, vocab_size=32, state_size=8, num_test=8, learning_rates=(1e-3,),
                 mixers="attn")
    full = bench_mqar.run(tmp_path / "full", **small)
    quick = bench_mqar.run(tmp_path / "quick", quick=True, **small)
    assert full[0]["batch"] == 512 and quick[0]["batch"] == 64
    meta = [json.loads((tmp_path / d / "results.json").read_text())["meta"] for d in ("full", "quick")]
    assert [m["tie_embeddings"] for m in meta] == [True, False]
    model = bench_mqar.build_model("attn", 16, 32, 8, torch.device("cpu"), seed=0, tie_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_merge_with_mixed_budgets_keeps_the_best_run_and_names_its_steps(tmp_path):
    small = dict(quick=True, cells=((16, 2, 16),), vocab_size=32, state_size=8, batch_size=4, num_test=8,
                 learning_rates="1e-2", mixers="attn")
    short = bench_mqar.run(tmp_path / "short", steps=1, **small)
    long = bench_mqar.run(tmp_path / "long", steps=6, **small)
    with pytest.raises(ValueError, match="steps"):
        bench_mqar.merge_results(tmp_path / "m", [tmp_path / "short", tmp_path / "long"])
    (row,) = bench_mqar.merge_results(tmp_path / "m", [tmp_path / "short", tmp_path / "long"], mixed_budgets=True)
    assert row["lr_accuracy"] == {"1.00e-02@1": round(short[0]["accuracy"], 4),
                                  "1.00e-02@6": round(long[0]["accuracy"], 4)}
    best = max((short[0], 1), (long[0], 6), key=lambda r: r[0]["accuracy"])
    assert row["accuracy"] == best[0]["accuracy"] and row["steps"] == best[1]
    assert "mixed_budgets" in json.loads((tmp_path / "m" / "results.json").read_text())["meta"]


@pytest.mark.parametrize("name", ["batch_size", "num_test", "vocab_size", "state_size", "budget_s"])
def test_zero_sizes_are_refused_not_read_as_defaults(tmp_path, name):
    with pytest.raises(ValueError, match=name):
        bench_mqar.run(tmp_path, quick=True, cells=((16, 2, 16),), steps=1, **{name: 0})


def test_bounded_window_mixers_run_end_to_end_and_their_rows_say_what_was_compared(tmp_path):
    from wonderful_matrices.cli import main

    out = tmp_path / "w"
    assert main(["bench", "mqar", "--quick", "--cells", "64:16", "--steps", "2", "--vocab-size", "32",
                 "--learning-rates", "1e-2", "--mixers", "attn", "--windows", "4,8", "--out", str(out)]) == 0
    data = json.loads((out / "results.json").read_text())
    rows = {r["mixer"]: r for r in data["rows"]}
    assert list(rows) == ["attn", "dma-w4", "swa-w4", "ssd-s4", "dma-w8", "swa-w8", "ssd-s8"]
    assert [rows[m]["keep_window"] for m in rows] == [None, 4, 4, None, 8, 8, None]
    # 2 bytes per element: attn holds K and V of all 64 keys of width 16; a w-key cache and SSD state n = w match
    assert rows["attn"]["state_bytes"] == 2 * 2 * 64 * 16
    for w in (4, 8):
        assert rows[f"dma-w{w}"]["state_bytes"] == rows[f"swa-w{w}"]["state_bytes"] == 2 * 2 * w * 16
        assert rows[f"ssd-s{w}"]["state_bytes"] == rows[f"dma-w{w}"]["state_bytes"]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows.values())
    assert rows["swa-w8"]["model"] == "SWA w=8" and data["meta"]["windows"] == [4, 8]
    md = (out / "results.md").read_text()
    assert "| keep_window | state_bytes |" in md and "SSD n=4" in md
    merged = bench_mqar.merge_results(tmp_path / "m", [out])
    assert [r["mixer"] for r in merged] == list(rows)
    assert (tmp_path / "m" / "mqar.png").stat().st_size > 1000


@pytest.mark.parametrize("width", [16, 64, 128, 256])
@pytest.mark.parametrize("window", [1, 64, 128, 256])
def test_ssd_state_of_a_window_holds_the_bytes_of_its_kv_cache(width, window):
    n = bench_mqar.matching_state_size(window, width)
    attn, ssd = (bench_mqar.model_config(m, width, 32) for m in (f"dma-w{window}", f"ssd-s{n}"))
    assert ssd.ssd_num_heads * ssd.ssd_head_dim * n == 2 * window * attn.num_key_value_heads * attn.head_dim
    assert n == window and ssd.ssd_state_size == n and attn.keep_window == window
    assert bench_mqar.state_bytes(f"ssd-s{n}", 2048, width) == bench_mqar.state_bytes(f"dma-w{window}", 2048, width)
    assert bench_mqar.window_mixers([window]) == (f"dma-w{window}", f"swa-w{window}", f"ssd-s{window}")


def test_hybrid_ratio_mixers_layers_state_and_rows(tmp_path):
    for mixer, layers in (("hyb7-w8", ["ssd"] * 7 + ["dma"]), ("hyb3-w8", (["ssd"] * 3 + ["dma"]) * 2),
                          ("hyb1-w8", ["ssd", "dma"] * 4)):
        cfg = bench_mqar.model_config(mixer, 16, 32)
        assert cfg.mixer_types == layers and cfg.keep_window == 8 and cfg.dma_mask_form == "gate"
        assert cfg.ssd_state_size == bench_mqar.matching_state_size(8, 16) == 8
        assert bench_mqar.parse_mixer(mixer) == ("hyb", 8) and bench_mqar.hybrid_ratio(mixer) == int(mixer[3])
        # every layer holds the bytes of an 8-key cache once T >= 8; below, the DMA layers hold T keys
        assert bench_mqar.state_bytes(mixer, 64, 16) == bench_mqar.state_bytes("dma-w8", 64, 16)
        dma_layers = layers.count("dma")
        elements = (8 - dma_layers) * 2 * 8 * 16 + dma_layers * 2 * 4 * 16
        assert bench_mqar.state_bytes(mixer, 4, 16) == 2 * (elements // 8)
    assert bench_mqar.mixer_name("hyb3-w64") == "SSD:DMA 3:1 w=64" and bench_mqar.hybrid_ratio("dma-w64") is None
    for bad in ("hyb0-w8", "hyb10-w8", "hyb3-w0", "hyb-w8", "hyb3"):
        with pytest.raises(ValueError, match="mixer"):
            bench_mqar.parse_mixer(bad)
    out = tmp_path / "h"
    rows = bench_mqar.run(out, quick=True, cells=((16, 2, 16),), steps=2, vocab_size=32, batch_size=4, num_test=8,
                          learning_rates=(1e-2,), mixers="hyb3-w4,dma-w4,hyb7-w4")
    assert [r["mixer"] for r in rows] == ["hyb3-w4", "dma-w4", "hyb7-w4"]
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["keep_window"] == 4 for r in rows)
    merged = bench_mqar.merge_results(tmp_path / "m", [out])
    assert [r["mixer"] for r in merged] == ["dma-w4", "hyb3-w4", "hyb7-w4"]


def test_sliding_window_mixer_is_attention_over_the_last_w_keys():
    # oracle: causal softmax attention restricted to keys (i - w, i], float64, from the layer's own projections
    width, w, length = 16, 5, 23
    model = bench_mqar.build_model(f"swa-w{w}", width, 32, 8, torch.device("cpu"), seed=0).double()
    layer = model.model.layers[0].mixer
    names = {n for n, _ in layer.named_parameters()}
    assert not any("dt_proj" in n or "A_log" in n for n in names), names  # nothing learns which keys to keep
    torch.manual_seed(1)
    x = torch.randn(3, length, width, dtype=torch.float64)
    pos = torch.arange(length).expand(3, -1)
    q, k, v, bias = layer._project(x, pos, None)
    assert torch.equal(bias, torch.zeros_like(bias))
    scores = torch.einsum("bihd,bjhd->bhij", q, k) / width ** 0.5
    i, j = torch.arange(length)[:, None], torch.arange(length)[None, :]
    scores = scores.masked_fill((j > i) | (j <= i - w), float("-inf"))
    expected = layer.o_proj(torch.einsum("bhij,bjhd->bihd", scores.softmax(-1), v).reshape(3, length, width))
    got = layer(x, pos)
    assert (got - expected).norm() / expected.norm() < 1e-10
    # the learned-mask DMA of the same window differs: its bias is not all zeros
    dma = bench_mqar.build_model(f"dma-w{w}", width, 32, 8, torch.device("cpu"), seed=0).model.layers[0].mixer
    assert "dt_proj.weight" in dict(dma.named_parameters())


def test_mixer_and_window_arguments_are_checked(tmp_path, capsys):
    from wonderful_matrices.cli import main

    assert bench_mqar.parse_mixer("dma-w64") == ("dma", 64) and bench_mqar.parse_mixer("ssd") == ("ssd", None)
    for bad in ("swa", "dma-w0", "swa-w-3", "ssd-w64", "attn-w64", "dma-w6.5"):
        with pytest.raises(ValueError, match="mixer"):
            bench_mqar.parse_mixer(bad)
    for bad in ("", "64,x", "0", "64,-1", "6.5", (64, 1.5)):
        with pytest.raises(ValueError, match="windows"):
            bench_mqar.parse_windows(bad)
    small = dict(quick=True, cells=((16, 2, 16),), steps=1, vocab_size=32, batch_size=4, num_test=8)
    with pytest.raises(ValueError, match="windows"):
        bench_mqar.run(tmp_path, windows="64,abc", **small)
    with pytest.raises(ValueError, match="mixers"):
        bench_mqar.run(tmp_path, mixers="dma,swa-w", **small)
    # the CLI: one line, no traceback
    for args, name in ((["--windows", "64,0"], "windows="), (["--mixers", "swa-w"], "mixers=")):
        assert main(["bench", "mqar", "--quick", "--cells", "64:16", "--out", str(tmp_path), *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"wm bench: error: {name}") and err.count("\n") == 1, err


def test_merge_checks_each_learning_rates_own_budget_and_keeps_the_better_repeat(tmp_path):
    """The budget check compares a learning rate with its own earlier run (it compared with the cell's best run,
    so a rate run at two budgets could pass); two mixers of a cell at different budgets are refused as well
    without --mixed-budgets; a rate run twice at one budget keeps the better accuracy, as ``accuracy`` does."""
    bench_mqar.run(tmp_path / "template", quick=True, cells=((16, 2, 16),), steps=1, vocab_size=32, state_size=8,
                   batch_size=4, num_test=8, learning_rates=(1e-3,), mixers="attn,dma")
    template = json.loads((tmp_path / "template" / "results.json").read_text())

    def part(name, rows):  # rows: (mixer, steps, {lr: accuracy})
        data = json.loads(json.dumps(template))
        by_mixer = {r["mixer"]: r for r in template["rows"]}
        data["rows"] = []
        for mixer, steps, lr_accuracy in rows:
            best = max(lr_accuracy, key=lr_accuracy.get)
            data["rows"].append(dict(by_mixer[mixer], steps=steps, lr_accuracy=lr_accuracy,
                                     accuracy=lr_accuracy[best], best_lr=best))
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(data))
        return tmp_path / name

    a = part("a", [("attn", 100, {"1.00e-03": 0.3})])
    b = part("b", [("attn", 200, {"2.00e-03": 0.9})])
    c = part("c", [("attn", 200, {"1.00e-03": 0.2})])
    with pytest.raises(ValueError, match="lr 1.00e-03 of cell .* was also run with 100 steps, here with 200"):
        bench_mqar.merge_results(tmp_path / "m", [a, b, c])
    with pytest.raises(ValueError, match=r"was run with \[100, 200\] steps"):
        bench_mqar.merge_results(tmp_path / "m", [a, b])
    d = part("d", [("dma", 5000, {"1.00e-03": 1.0})])
    with pytest.raises(ValueError, match=r"was run with \[100, 5000\] steps"):
        bench_mqar.merge_results(tmp_path / "m", [a, d])
    e, f = part("e", [("attn", 100, {"1.00e-03": 0.9})]), part("f", [("attn", 100, {"1.00e-03": 0.3})])
    (row,) = bench_mqar.merge_results(tmp_path / "m", [e, f])
    assert row["accuracy"] == 0.9 and row["lr_accuracy"] == {"1.00e-03": 0.9}
    # a tie names the rate a whole sweep runs first (nearest PROMISING_LR), whatever the order of the parts
    g, h = part("g", [("attn", 100, {"1.00e-03": 0.5})]), part("h", [("attn", 100, {"4.00e-03": 0.5})])
    assert [bench_mqar.merge_results(tmp_path / "m", parts)[0]["best_lr"] for parts in ([g, h], [h, g])] == \
        ["4.00e-03", "4.00e-03"]


def test_a_cells_rows_do_not_depend_on_the_other_cells(tmp_path, monkeypatch):
    # the data seed once came from the cell's place in `cells`: a cell run alone got other rows than in a sweep
    seeds = []
    real = bench_mqar.mqar
    monkeypatch.setattr(bench_mqar, "mqar", lambda n, t, kv, v, seed: seeds.append((t, kv, seed)) or real(n, t, kv, v,
                                                                                                         seed=seed))
    small = dict(quick=True, steps=1, vocab_size=32, state_size=8, batch_size=4, num_test=8, mixers="attn",
                 learning_rates="1e-2")
    bench_mqar.run(tmp_path / "both", cells=((16, 2, 16), (32, 4, 16)), **small)
    bench_mqar.run(tmp_path / "alone", cells=((32, 4, 16),), **small)
    both, alone = seeds[:4], seeds[4:]
    assert alone == both[2:]  # the 32-token cell's training and test seeds, alone as in the sweep
    assert len({s for _, _, s in seeds}) == 4  # training and test rows of the two cells all differ
    assert bench_mqar.cell_data_seed(1, 16, 2) != bench_mqar.cell_data_seed(0, 16, 2)
    # parts made under another rule (no data_seed in their meta) are not merged with these
    data = json.loads((tmp_path / "alone" / "results.json").read_text())
    data["meta"].pop("data_seed")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "results.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="data_seed"):
        bench_mqar.merge_results(tmp_path / "m", [tmp_path / "both", tmp_path / "old"])


def test_hybrid_ratios_whose_groups_do_not_fill_the_layers_are_refused():
    """hyb<r> promises groups of r SSD layers then one DMA layer over HYBRID_LAYERS = 8 layers: only r + 1 dividing 8
    lays them out so (hyb5 was SSSSSDSD, hyb3's 6 : 2 under the name "SSD:DMA 5:1"; hyb9 was hyb7's layout)."""
    for r in (2, 4, 5, 6, 8, 9):
        with pytest.raises(ValueError, match=f"mixer='hyb{r}-w8' is not allowed: .*r \\+ 1 must divide 8"):
            bench_mqar.parse_mixer(f"hyb{r}-w8")
    for r in (1, 3, 7):
        assert bench_mqar.model_config(f"hyb{r}-w8", 16, 32).mixer_types == (["ssd"] * r + ["dma"]) * (8 // (r + 1))


def test_learning_rates_that_share_a_table_key_are_refused(tmp_path):
    """lr_accuracy is keyed by the rate to 3 digits: two such rates were two runs of one row, its accuracy the best of
    both while lr_accuracy showed the later one."""
    for rates in ("1e-2,1e-2", "1e-2,1.0004e-2"):
        with pytest.raises(ValueError, match="learning_rates=.* is not allowed: .*distinct"):
            bench_mqar.run(tmp_path, quick=True, cells=((16, 2, 16),), steps=1, vocab_size=32, batch_size=4,
                           num_test=8, learning_rates=rates, mixers="attn")


def test_merge_names_every_learning_rate_run_more_than_once(tmp_path):
    """A rate of one mixer run in two parts keeps the better run: the merged meta (and results.md) says so, since the
    table shows one number for it."""
    small = dict(quick=True, cells=((16, 2, 16),), steps=2, vocab_size=32, batch_size=4, num_test=8)
    for name, mixers in (("a", "attn,dma"), ("b", "attn")):
        bench_mqar.run(tmp_path / name, learning_rates=(1e-2,), mixers=mixers, **small)
    bench_mqar.merge_results(tmp_path / "m", [tmp_path / "a", tmp_path / "b"])
    meta = json.loads((tmp_path / "m" / "results.json").read_text())["meta"]
    assert meta["repeated_runs"] == ["T=16 width=16 attn lr 1.00e-02: 2 runs, the best kept"]
    assert "- repeated_runs: ['T=16 width=16 attn lr 1.00e-02" in (tmp_path / "m" / "results.md").read_text()
    bench_mqar.merge_results(tmp_path / "single", [tmp_path / "a"])
    assert "repeated_runs" not in json.loads((tmp_path / "single" / "results.json").read_text())["meta"]


def test_seed_flag_reaches_the_run_and_is_checked(tmp_path, capsys):
    from wonderful_matrices.bench.__main__ import main

    args = ["mqar", "--quick", "--cells", "64:16", "--mixers", "dma-w4", "--steps", "1", "--vocab-size", "32",
            "--learning-rates", "1e-2"]
    assert main(args + ["--seed", "3", "--out", str(tmp_path / "s3")]) == 0
    data = json.loads((tmp_path / "s3" / "results.json").read_text())
    assert data["meta"]["seed"] == 3
    assert main(args + ["--seed", "-1", "--out", str(tmp_path / "bad")]) == 2
    assert "seed=-1 is not allowed" in capsys.readouterr().err
    with pytest.raises(ValueError, match="seed"):
        bench_mqar.run(tmp_path / "b", quick=True, cells=((16, 2, 16),), steps=1, seed=True)
