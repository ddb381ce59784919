"""Error types that decide the exit code: a user error is one line and exit 2."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's config, files or arguments: print one line, exit 2, no traceback."""

    exit_code = 2


class NonFiniteError(UserError):
    """Training diverged (a non-finite loss or weight): one line naming run, round and what, exit 2, and the
    round is not committed. The fix is in the config (a smaller learning rate, float32)."""


class RankFailure(Exception):
    """Raised (test-only) to prove that an error on one rank ends every rank."""


class AgreedFailure(Exception):
    """An unexpected error on some rank during a step that every rank agrees on: every rank raises this, and
    the first rank's traceback is printed once."""
