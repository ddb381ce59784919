"""Which groups have saved their work in progress since a save request (USR2), seen from rank 0.

Groups are on different code paths when the request comes (one trains, one attacks, one waits), so they do
not meet in a collective to say so: each group leader notes its save in a small file,

    <output>.ckpt/.savepoints/<token>/group_<G>

and rank 0's safe stop counts those files (launch/safestop.py polls `savepoint.progress()`). The token is drawn
by rank 0 when the sweep starts and broadcast, so marks of an earlier attempt never count. A group whose runs of
the round are done is not marked: it waits for the others in a collective, and once they are done too the round
is committed, which stops the sweep right there (the safe stop's other way out).
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

    def mark(self) -> None:
        if self.leader:
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / f"group_{self.group_index}").write_text("saved\n")

    def notify(self, what: str) -> None:
        if what == "saved":
            self.mark()

    def count(self) -> tuple[int, int]:
        found = len(list(self.folder.glob("group_*"))) if self.folder.is_dir() else 0
        return found, self.n_groups


def attach(hooks: Hooks) -> None:
    """Set up the marks when the sweep starts (collective); remove them when it ends."""

    def started(ctx) -> None:
        lay = ctx.layout
        root = ctx.results.checkpoint_root / FOLDER
        if lay.is_root:
            shutil.rmtree(root, ignore_errors=True)  # an earlier attempt's marks
        token = lay.world.bcast(uuid.uuid4().hex if lay.is_root else None)
        marks = SaveMarks(root / token, lay.group_index, lay.n_groups, lay.is_group_leader)
        savepoint.plug(marks.notify, marks.count if lay.is_root else None)

    def finished(ctx) -> None:
        savepoint.plug(None, None)
        if ctx.layout.is_root:
            shutil.rmtree(ctx.results.checkpoint_root / FOLDER, ignore_errors=True)

    hooks.on("sweep_started", started, first=True)
    hooks.on("sweep_finished", finished)
