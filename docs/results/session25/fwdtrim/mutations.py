"""Break session 25's trimmed forward / dq loops one way at a time and list which interpreter tests fail (of
tests/ops/test_dma_triton.py and test_dma_packed.py). Each break is applied to a temporary copy of ``src``; the
repository is not edited.

    python docs/results/session25/fwdtrim/mutations.py > docs/results/session25/fwdtrim/mutations.log

A break listed as "(performance only)" moves work between loops without changing results: no test can fail.
"""
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[4]
KERNELS = "wonderful_matrices/ops/dma/windowed_kernels.py"
TESTS = ["tests/ops/test_dma_triton.py", "tests/ops/test_dma_packed.py"]
FWD_OWN_BEFORE = ("list_bias_ptr + base, skl, pos, dd, dmask, c_own, c_split,\n"
                  "                               qk_scale, PRECISION, BLOCK_N, 1, False, WIDE)")
DQ_OWN_BEFORE = ("list_bias_ptr + base, skl, pos, dd, dmask, c_own, c_split, qk_scale, PRECISION, BLOCK_N,\n"
                 "                   1, False, WIDE)")
DQ_CARRIED = ("list_bias_ptr + base, skl, pos, dd, dmask, c_head, c_alive, qk_scale, PRECISION, BLOCK_N,\n"
              "                   1, True, WIDE)")
MUTATIONS = {  # name: (old, new, occurrences to replace or None for all)
    "list bias not scaled by log2 e": ("tl.store(list_bias_ptr + at, kb * 1.4426950408889634",
                                       "tl.store(list_bias_ptr + at, kb", None),
    "list drop of the next entry": ("tl.load(drop_ptr + row * lk + j, mask=cmask",
                                    "tl.load(drop_ptr + row * lk + j + 1, mask=cmask", None),
    "own keys before the tile rounded up to a whole tile": (
        "c_split = c_own + (c_prev - c_own) // BLOCK_N * BLOCK_N",
        "c_split = c_own + tl.cdiv(c_prev - c_own, BLOCK_N) * BLOCK_N", None),
    "own keys before the tile taken to the first LIVE_TILE's end": (
        "c_prev = tl.load(ends_ptr + first_at - 1,", "c_prev = tl.load(ends_ptr + first_at,", None),
    "own keys before the tile taken to the last LIVE_TILE's end (128-query tiles)": (
        "    first_at = block_at + in_block // TILE", "    first_at = block_at + (in_block + BLOCK_M) // TILE - 1",
        None),
    "own keys before the tile cut at 64 entries whatever the key tile": (
        "c_split = c_own + (c_prev - c_own) // BLOCK_N * BLOCK_N", "c_split = c_own + (c_prev - c_own) // 64 * 64",
        None),
    "(performance only) own keys before the tile from the LIVE_TILE before the query tile's second": (
        "    first_at = block_at + in_block // TILE", "    first_at = block_at + in_block // BLOCK_M", None),
    "carried keys' loop unbounded (forward)": ("qk_scale, PRECISION, BLOCK_N, 1, True, WIDE)",
                                               "qk_scale, PRECISION, BLOCK_N, 1, False, WIDE)", 1),
    "carried keys' loop unbounded (dq)": (DQ_CARRIED, DQ_CARRIED.replace("1, True", "1, False"), None),
    "own keys before the tile unmasked (forward)": (FWD_OWN_BEFORE, FWD_OWN_BEFORE.replace("1, False", "0, False"),
                                                   None),
    "own keys before the tile unmasked (dq)": (DQ_OWN_BEFORE, DQ_OWN_BEFORE.replace("1, False", "0, False"), None),
    "p < drop_j only for every masked loop": ("    if MASK == 1:\n        keep", "    if MASK > 0:\n        keep",
                                              None),
}


def failing(src: pathlib.Path) -> list[str]:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": f"{src}:{ROOT / 'tests'}"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", *TESTS], cwd=ROOT,
                          env=env, capture_output=True, text=True)
    if proc.returncode not in (0, 1):  # neither "all passed" nor "some failed": an error, reported as such
        return [f"(pytest exit {proc.returncode}) {proc.stdout[-300:]}"]
    return sorted(set(re.findall(r"^FAILED (.+?)(?: - .*)?$", proc.stdout, flags=re.MULTILINE)))


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src = pathlib.Path(tmp) / "src"
        for name, (old, new, count) in MUTATIONS.items():
            shutil.rmtree(src, ignore_errors=True)
            shutil.copytree(ROOT / "src", src)
            path = src / KERNELS
            text = path.read_text()
            assert old in text, name
            path.write_text(text.replace(old, new, -1 if count is None else count))
            failed = failing(src)
            print(f"{name}: {len(failed)} failing")
            for test in failed:
                print(f"    {test}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
