"""`hpcrobust run`, paused inside one commit until it is killed (for tests/test_crash.py).

    python tests/crash_driver.py STEP ROUND MARKER [--in-place] CONFIG [key=value ...]

At STEP (one of store/writer.py's STEPS) of round ROUND's commit, it writes MARKER and sleeps. With
--in-place, the commit is a naive one, which the kill test must catch: it writes into the results file
in place without a journal, marks each record committed as soon as its group exists, and flushes then (as a
writer that wants its progress on disk would).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def commit_in_place() -> None:
    import os

    from hpcrobust.store import journal, writer

    class Unjournaled(journal.JournalFile):
        """The file opened for writing in place, with no journal: nothing is saved before it is overwritten."""

        def __init__(self, path: Path) -> None:
            journal._Positioned.__init__(self, os.open(path, os.O_RDWR))
            self.path, self.length, self._saved, self._pending, self._jfd = path, 0, [], [], -1

        def commit(self) -> None:
            os.fsync(self._fd)
            self.close()

    layout = writer._layout

    def layout_and_mark(f, meta: dict, early: bool = False) -> None:
        layout(f, meta, early)
        f[meta["path"]].attrs[writer.COMMITTED] = 1
        f.flush()

    writer.JournalFile = Unjournaled
    writer._layout = layout_and_mark


def main() -> int:
    step, rnd, marker, *rest = sys.argv[1:]
    if rest[0] == "--in-place":
        commit_in_place()
        rest = rest[1:]
    from hpcrobust.sweep.command import run_command
    from hpcrobust.sweep.hooks import Hooks

    def pause(ctx, r: int, s: str) -> None:
        if r == int(rnd) and s == step:
            Path(marker).write_text(s)
            while True:
                time.sleep(1)

    hooks = Hooks()
    hooks.on("commit_step", pause)
    return run_command(rest[0], rest[1:], quiet=True, hooks=hooks)


if __name__ == "__main__":
    sys.exit(main())
