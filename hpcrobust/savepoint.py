"""A process-wide request to save what a round has done so far, now rather than on the usual schedule.

SLURM's USR2 (sent before the time limit) sets it (launch/safestop.py). Every saver of work inside a round
(training steps: training/resume.py; attack state: attacks) honours it at its next step boundary, and tells
`saved()` once it has saved, so the safe stop can requeue as soon as the work in progress is on disk instead of
waiting for a round to end.
"""

from __future__ import annotations

import time

_requested_at: float | None = None
_saves_since: int = 0


def request() -> None:
    """Ask every saver to save at its next step boundary (idempotent)."""
    global _requested_at, _saves_since
    if _requested_at is None:
        _requested_at = time.monotonic()
        _saves_since = 0


def requested() -> bool:
    return _requested_at is not None


def saved() -> None:
    """A saver kept its state; counts only while a save is requested."""
    global _saves_since
    if _requested_at is not None:
        _saves_since += 1


def saves_since_request() -> int:
    return _saves_since


def clear() -> None:
    global _requested_at, _saves_since
    _requested_at, _saves_since = None, 0
