"""Audit Q5: the ``hyb{r}-w{w}`` models — layer layout against the docstring ("groups of r SSD layers then one DMA
layer, the last layer DMA", 8 layers), what its display name says, and each layer's decoding state against
``state_bytes``.

Run: ``OMP_NUM_THREADS=1 PYTHONPATH=src python docs/results/session27/audit_mqar/q5_hybrids.py`` (log beside it).
"""
import time

import torch

torch.set_num_threads(1)

from wonderful_matrices.bench import mqar as bench  # noqa: E402


def expected_layout(r, layers=8):
    """Written from the docstring: r SSD then one DMA, repeated; the last layer is DMA."""
    out = []
    while len(out) < layers:
        out += ["ssd"] * r + ["dma"]
    out = out[:layers]
    out[-1] = "dma"
    return out


def main():
    t0 = time.time()
    print("== 5a. layout of hyb{r}-w64 for every ratio the name accepts (1-9)")
    for r in range(1, 10):
        name = f"hyb{r}-w64"
        try:
            cfg = bench.model_config(name, 128, 64)
        except ValueError as exc:
            print(f"{name}: rejected ({exc})")
            continue
        types = list(cfg.mixer_types)
        n_ssd, n_dma = types.count("ssd"), types.count("dma")
        # runs of SSD layers between DMA layers
        runs, run = [], 0
        for t in types:
            if t == "ssd":
                run += 1
            else:
                runs.append(run)
                run = 0
        ok = types == expected_layout(r) and all(x == r for x in runs)
        print(f"{name} '{bench.mixer_name(name)}': {''.join('S' if t == 'ssd' else 'D' for t in types)} "
              f"({n_ssd} SSD : {n_dma} DMA = {n_ssd / n_dma:.2f}:1; SSD runs before each DMA {runs}); "
              f"every group r SSD + 1 DMA: {ok}; windows {cfg.keep_window}, ssd state {cfg.ssd_state_size}")

    print("== 5b. per-layer decoding state of the hybrids (T=300 + 3 decoded, width 128) vs state_bytes / 2")
    for name in ("hyb7-w64", "hyb3-w128", "hyb1-w32"):
        w = bench.parse_mixer(name)[1]
        model = bench.build_model(name, 128, 256, 128, torch.device("cpu"), seed=0)
        model.eval()
        with torch.no_grad():
            out = model(input_ids=torch.randint(0, 256, (1, 300)), use_cache=True)
            cache = out.past_key_values
            nxt = out.logits[:, -1:].argmax(-1)
            for _ in range(3):
                out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
                nxt = out.logits[:, -1:].argmax(-1)
        per = []
        for i, kind in enumerate(cache.mixer_types):
            st = cache.layer_state(i)
            per.append(st["ssm_state"].numel() if kind == "ssd" else st["key"].numel() + st["value"].numel())
        print(f"{name}: layer elements {per}; a {w}-key cache holds 2*{w}*128 = {2 * w * 128}; "
              f"state_bytes/2 = {bench.state_bytes(name, 303, 128) // 2}; every layer equal: "
              f"{set(per) == {2 * w * 128}}")
    print(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
