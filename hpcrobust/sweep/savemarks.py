"""Which groups have saved their work in progress since a save request (USR2), seen from rank 0.

Groups are on different code paths when the request comes (one trains, one attacks, one waits), so they do
not meet in a collective to say so: each group leader notes its save in a small file,

    <output>.ckpt/.savepoints/<token>/group_<G>

and rank 0's safe stop counts those files (launch/safestop.py polls `savepoint.progress()`). The token is drawn
by rank 0 when the sweep starts and broadcast, so marks of an earlier attempt never count. A group whose runs of
the round are done (`runs_done`) has nothing unsaved (its trained model and attack results are on disk), so it
is marked as soon as the request comes, or when it gets there.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from hpcrobust import savepoint
from hpcrobust.sweep.hooks import Hooks

FOLDER = ".savepoints"


class SaveMarks:
    """The marks of one sweep attempt (every rank holds one; the leaders write, rank 0 counts)."""

    def __init__(self, folder: Path, group_index: int, n_groups: int, leader: bool) -> None:
        self.folder = folder
        self.group_index = group_index
        self.n_groups = n_groups
        self.leader = leader
        self.idle = False  # between this group's runs_done and the next round_started: nothing unsaved

    def mark(self) -> None:
        if self.leader:
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / f"group_{self.group_index}").write_text("saved\n")

    def notify(self, what: str) -> None:
        if what == "saved" or (what == "request" and self.idle):
            self.mark()

    def count(self) -> tuple[int, int]:
        found = len(list(self.folder.glob("group_*"))) if self.folder.is_dir() else 0
        return found, self.n_groups


def attach(hooks: Hooks) -> None:
    """Set up the marks when the sweep starts (collective), follow the group's phases, remove them at the end."""
    state: dict[str, SaveMarks] = {}

    def started(ctx) -> None:
        lay = ctx.layout
        root = ctx.results.checkpoint_root / FOLDER
        if lay.is_root:
            shutil.rmtree(root, ignore_errors=True)  # an earlier attempt's marks
        token = lay.world.bcast(uuid.uuid4().hex if lay.is_root else None)
        marks = SaveMarks(root / token, lay.group_index, lay.n_groups, lay.is_group_leader)
        state["marks"] = marks
        savepoint.plug(marks.notify, marks.count if lay.is_root else None)

    def runs_done(ctx, rnd: int) -> None:
        marks = state["marks"]
        marks.idle = True
        if savepoint.requested():
            marks.mark()

    def round_started(ctx, rnd: int) -> None:
        state["marks"].idle = False

    def finished(ctx) -> None:
        savepoint.plug(None, None)
        if ctx.layout.is_root:
            shutil.rmtree(ctx.results.checkpoint_root / FOLDER, ignore_errors=True)

    hooks.on("sweep_started", started, first=True)
    hooks.on("round_started", round_started)
    hooks.on("runs_done", runs_done)
    hooks.on("sweep_finished", finished)
