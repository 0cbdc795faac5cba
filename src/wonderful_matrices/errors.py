"""The package's two kinds of error, in one leaf module that every layer of the package may import.

* ``ValueError`` from :func:`require`: a bad argument of a function, layer or config; the message names the
  argument, its value and what is allowed.
* :class:`UserError`: a problem the user can fix outside the code (bad path, empty corpus, corrupted
  checkpoint...). The command line prints its message on one line and exits with status 2, without a traceback.

This module imports nothing of the package, so ``ops`` and ``data`` (which otherwise import nothing of it) can use
it.
"""
import math


class UserError(Exception):
    """A problem with the user's input; the message says what is wrong and what to do."""


def reject(argument: str, value, allowed: str) -> None:
    """Raise ``ValueError`` naming ``argument``, its ``value`` and what is ``allowed``. On a hot path write
    ``if not condition: reject(...)``, so the message's arguments are built only when the check fails."""
    raise ValueError(f"{argument}={value!r} is not allowed: {allowed}")


def require(condition: bool, argument: str, value, allowed: str) -> None:
    """:func:`reject` unless ``condition``."""
    if not condition:
        reject(argument, value, allowed)


def is_int(value) -> bool:
    """An integer and not a bool (``True`` is an ``int`` to Python, never a size to a layer)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
