"""wm.ops.ssd(backend="triton") on CPU: runs ``ssd_triton_cases.py`` in a child pytest under the Triton
interpreter (``TRITON_INTERPRET=1`` only takes effect if set before triton is first imported, which this
process may already have done). The cases compare outputs, final state and every gradient with the float64
oracle; see that file."""
from pathlib import Path

import pytest

from conftest import run_under_triton_interpreter

pytest.importorskip("triton")


def test_triton_kernels_match_the_oracle_under_the_interpreter():
    run_under_triton_interpreter(Path(__file__).with_name("ssd_triton_cases.py"))
