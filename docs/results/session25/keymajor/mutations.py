"""Break the key-major path one way at a time and list which tests of tests/ops/test_dma_windowed_key.py fail
(each test must fail for at least one break). Edits the source files in place and restores them after each run.

    python docs/results/session25/keymajor/mutations.py > mutations.log   # from the repository root
"""
import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[4]
KERNEL = ROOT / "src/wonderful_matrices/ops/dma/windowed_key_kernels.py"
WIRING = ROOT / "src/wonderful_matrices/ops/dma/windowed_kernels.py"
TESTS = "tests/ops/test_dma_windowed_key.py"
MUTATIONS = {
    "mask without the drop bound": (KERNEL, "keep = (j[:, None] <= pos[None, :]) & (pos[None, :] < drop[:, None])",
                                   "keep = j[:, None] <= pos[None, :]"),
    "mask without the position bound": (KERNEL, "keep = (j[:, None] <= pos[None, :]) & (pos[None, :] < drop[:, None])",
                                       "keep = pos[None, :] < drop[:, None]"),
    "unmasked up to the last drop": (KERNEL, "full_hi = (tl.min(tl.where(live, drop, lk), 0)",
                                     "full_hi = (tl.max(tl.where(live, drop, offset), 0)"),
    "mask never applied": (KERNEL, "if (r0 < full_lo) | (r0 >= full_hi):", "if r0 < 0:"),
    "unmasked from the first key": (KERNEL, "full_lo = tl.cdiv(tl.max(tl.where(live, first, offset), 0)",
                                         "full_lo = tl.cdiv(tl.min(tl.where(live, first, lk), 0)"),
    "keys no query keeps not zeroed": (KERNEL, "dk = tl.where(live[:, None], dk * scale, 0.0)", "dk = dk * scale"),
    "first query of the group only (GQA)": (KERNEL, "for hh in range(0, group):", "for hh in range(0, 1):"),
    "lq < lk: first position j": (KERNEL, "first = tl.maximum(j, offset)", "first = j"),
    "WIDE gathers other keys": (KERNEL, "    if WIDE:\n        j = j.to(tl.int64)",
                                "    if WIDE:\n        j = (lk - 1 - j).to(tl.int64)"),
    "query rows read as contiguous": (KERNEL, "q.stride(0), q.stride(1), q.stride(2), k.stride(0)",
                                      "q.stride(0), hq * d, d, k.stride(0)"),
    "tiling by drop descending": (KERNEL, "sort_drop = torch.where(live, drop.long(), 0)",
                                  "sort_drop = torch.where(live, lk - drop.long(), 0)"),
    "tile_work: unmasked up to the last drop": (KERNEL, "full_hi = torch.where(live, end, lq).amin(-1)",
                                                "full_hi = torch.where(live, end, 0).amax(-1)"),
    "tile_work: no unmasked tile counted": (KERNEL, "unmasked=int(unmasked.sum()))", "unmasked=0)"),
    "fake: dbias laid out (b, hkv, lk)": (WIRING, "dtype=dv_dtype), k.new_empty(b, lk, hkv, **f32))",
                                          "dtype=dv_dtype), k.new_empty(b, hkv, lk, **f32))"),
    "path not restored": (WIRING, "    finally:\n        DKV_PATH = saved", "    finally:\n        pass"),
}


def failing(name: str) -> list[str]:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": f"{ROOT / 'src'}:{ROOT / 'tests'}"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", TESTS], cwd=ROOT,
                          env=env, capture_output=True, text=True)
    failed = re.findall(r"^FAILED \S+?::(.+?)(?: - .*)?$", proc.stdout, flags=re.MULTILINE)
    if proc.returncode not in (0, 1):  # not "all passed" nor "some failed": an error, reported as such
        return [f"(pytest exit {proc.returncode}) {proc.stdout[-300:]}"]
    return sorted(set(failed))


def main():
    every = set()
    for name, (path, old, new) in MUTATIONS.items():
        source = path.read_text()
        assert source.count(old) == 1, name
        path.write_text(source.replace(old, new))
        try:
            failed = failing(name)
        finally:
            path.write_text(source)
        every.update(t.split("[")[0] for t in failed)
        print(f"## {name}: {len(failed)} failed", *failed, sep="\n    ", flush=True)
    print("\ntests that failed under some break:", *sorted(every), sep="\n    ")


if __name__ == "__main__":
    main()
