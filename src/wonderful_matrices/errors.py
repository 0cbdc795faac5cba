"""Errors a user can fix (bad path, empty corpus, corrupted checkpoint...).

The command line prints their message on one line and exits with status 2, without a traceback.
"""


class UserError(Exception):
    """A problem with the user's input; the message says what is wrong and what to do."""
