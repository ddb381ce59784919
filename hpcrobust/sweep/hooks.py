"""Named points of a sweep that other code attaches to, instead of patching the sweep.

Every rank fires every event at the same point of the sweep (right after a collective), so a
callback may itself take part in a collective, or raise to stop every rank together:

    sweep_started(ctx)              the checks passed, the lock is held, before round 0
    round_started(ctx, rnd)         a round that is not yet committed is about to run
    runs_done(ctx, rnd)             this group's runs of the round are done; the cross-run phases come next
    commit_step(ctx, rnd, step)     inside the commit, on the ranks that write: step is one of
                                    store/writer.py's STEPS (journaled, laid out, written,
                                    marked, committed)
    round_committed(ctx, rnd, n)    round `rnd` (n records) is in the file
    queue_committed(ctx)            parallel.schedule=queue only (see below): something was committed
    sweep_finished(ctx)             every round of every run is committed

Under parallel.schedule=queue (the default; sweep/queue_driver.py) groups meet only at the start and the end:
there `round_started` and `runs_done` fire on one group's ranks before and after each run's round it takes,
`commit_step` on the ranks that write each item it commits, `queue_committed` on one group's ranks after each
item it commits and while it waits for work, and on every rank after the last commit (what other groups
committed in between is in the file); `round_committed` does not fire (on a safe stop each group stops taking
items and counts as saved once its current item is committed or its savers have kept their state;
debug.stop_after_round caps the queue instead).

The SLURM safe stop (launch/safestop.py), the test switches (sweep/debug.py) and the experiment
trackers (tracking/) attach here. Callbacks run in the order they were attached; an observer that must see
every commit even when a later callback stops the sweep (a tracker) attaches with `first=True`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

EVENTS = ("sweep_started", "round_started", "runs_done", "commit_step", "round_committed", "queue_committed",
          "sweep_finished")


@dataclass
class Hooks:
    callbacks: dict[str, list[Callable[..., Any]]] = field(default_factory=lambda: {e: [] for e in EVENTS})

    def on(self, event: str, fn: Callable[..., Any], first: bool = False) -> None:
        if event not in self.callbacks:
            raise ValueError(f"unknown sweep event '{event}' (events: {', '.join(EVENTS)})")
        if first:
            self.callbacks[event].insert(0, fn)
        else:
            self.callbacks[event].append(fn)

    def fire(self, event: str, *args: Any) -> None:
        for fn in self.callbacks[event]:
            fn(*args)
