"""The ``wm`` parser: every numeric flag shows its default in ``--help``."""
import argparse

import pytest

from wonderful_matrices.cli import SUBCOMMANDS, build_parser


@pytest.mark.parametrize("command", ["train", "eval", "generate"])
def test_numeric_flags_show_their_defaults(command):
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    text = " ".join(sub.format_help().split())
    numeric = [a for a in sub._actions if isinstance(a.default, (int, float)) and not isinstance(a.default, bool)]
    assert numeric
    formatter = sub._get_formatter()
    for action in numeric:
        assert formatter._get_help_string(action).endswith("(default: %(default)s)"), action.dest
        assert f"(default: {action.default})" in text
    assert "(default: None)" not in text and "(default: False)" not in text
    assert set(SUBCOMMANDS) >= {"train", "eval", "generate", "info", "bench"}
