"""A process-wide request to save what a round has done so far, now rather than on the usual schedule.

SLURM's USR2 (sent before the time limit) sets it (launch/safestop.py). Every saver of work inside a round
(training steps: training/resume.py and training/shardsave.py; attack state: attacks) honours it at its next
step boundary, and tells `saved()` once it has saved, so the safe stop can requeue as soon as the work in
progress is on disk instead of waiting for a round to end.

The sweep (sweep/savemarks.py) plugs in two things, so that this module stays free of files and MPI:
a `notify` callback, told "request" and "saved" as they happen (a group leader notes its save on disk), and a
`progress` function that says how many of the sweep's groups have saved since the request (rank 0's poll).
"""

from __future__ import annotations

import time
from collections.abc import Callable

_requested_at: float | None = None
_saves_since: int = 0
_notify: Callable[[str], None] | None = None
_progress: Callable[[], tuple[int, int]] | None = None


def request() -> None:
    """Ask every saver to save at its next step boundary (idempotent)."""
    global _requested_at, _saves_since
    if _requested_at is None:
        _requested_at = time.monotonic()
        _saves_since = 0
        if _notify is not None:
            _notify("request")


def requested() -> bool:
    return _requested_at is not None


def request_id() -> float | None:
    """Tells one request from the next (a saver answers each request once)."""
    return _requested_at


def saved() -> None:
    """A saver kept its state; counts only while a save is requested."""
    global _saves_since
    if _requested_at is not None:
        _saves_since += 1
        if _notify is not None:
            _notify("saved")


def saves_since_request() -> int:
    return _saves_since


def clear() -> None:
    global _requested_at, _saves_since
    _requested_at, _saves_since = None, 0


def plug(notify: Callable[[str], None] | None, progress: Callable[[], tuple[int, int]] | None) -> None:
    """Set (or with None, remove) the sweep's callback and its progress function; one sweep at a time."""
    global _notify, _progress
    _notify, _progress = notify, progress


def progress() -> tuple[int, int] | None:
    """(groups that saved since the request, groups in the sweep) where this process can tell, else None."""
    return _progress() if _progress is not None else None


class SaveClock:
    """When a saver of work in progress (training steps, attack state) saves: every `every_s` seconds (0: after
    every step), and once per save request. The group leader's answer is the group's (the saver broadcasts it)."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self._last = time.monotonic()
        self._answered: float | None = None  # the request (request_id) already saved for

    def due(self) -> bool:
        return (self.every_s <= 0 or time.monotonic() - self._last >= self.every_s
                or (requested() and request_id() != self._answered))

    def ticked(self) -> bool:
        """Note a save (and tell `saved()`); True when it answered a pending request."""
        self._last = time.monotonic()
        answered = requested() and request_id() != self._answered
        if answered:
            self._answered = request_id()
        saved()
        return answered
