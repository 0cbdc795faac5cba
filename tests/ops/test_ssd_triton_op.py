"""wm.ops.ssd(backend="triton") on CPU: runs ``ssd_triton_cases.py`` in a child pytest under the Triton
interpreter (``TRITON_INTERPRET=1`` only takes effect if set before triton is first imported, which this
process may already have done). The cases compare outputs, final state and every gradient with the float64
oracle; see that file."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")


def test_triton_kernels_match_the_oracle_under_the_interpreter():
    here = Path(__file__).resolve()
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    src = str(here.parents[2] / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir",
                           str(here.parents[2]), str(here.with_name("ssd_triton_cases.py"))],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1], proc.stdout[-2000:]
