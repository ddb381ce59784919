"""One commit of a few records into FILE, through the real writer, killed or paused on request (for
tests/test_journal.py).

    python tests/journal_driver.py FILE count               commit; print "ENTRIES WRITES" (journal entries
                                                            appended, writes to the file)
    python tests/journal_driver.py FILE entry K             SIGKILL itself half-way through the K-th journal entry
    python tests/journal_driver.py FILE write K             SIGKILL itself half-way through the K-th write
    python tests/journal_driver.py FILE pause STEP MARKER   at STEP, write MARKER and wait until it is removed
    python tests/journal_driver.py FILE die STEP            SIGKILL rank 0 at STEP

Under mpiexec, each rank commits the records of the runs it owns (run % ranks == rank): with h5py built
with MPI, the parallel path (rank 0 lays out, every rank writes its own arrays).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

from hpcrobust.parallel.comm import Comm, launched_under_mpi, mpi
from hpcrobust.store import journal
from hpcrobust.store.results import ResultsFile
from hpcrobust.store.schema import FORMAT, SCHEMA_VERSION, Record, round_path, run_path, text_array

HEADER = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "hpcrobust_version": "t", "config": "{}",
          "science_hash": "abc"}


def record(run: int, rnd: int, n: int = 2000) -> Record:
    """A round with a few arrays (of n values) and a text array; its values depend on (run, rnd) only."""
    rng = np.random.default_rng(1000 * run + rnd)
    return Record(round_path(f"run{run}", rnd), attrs={"round": rnd},
                  scalars={"clean_accuracy": float(rng.uniform()), "n_params": 10 + run},
                  arrays={"attacks/a/asr": rng.uniform(size=n), "attacks/a/first_success": rng.integers(-1, 9, n),
                          "attacks/a/correct_before": rng.uniform(size=n) < 0.5,
                          "attacks/a/attack_text": text_array([f"s{i}é" * (i % 4) for i in range(40)])},
                  parent_attrs={run_path(f"run{run}"): {"model": "m", "seed": 0, "run_index": run}})


def commit(path: Path, rounds: range, on_step=None, world: Comm | None = None) -> int:
    world = world or Comm(None)
    return ResultsFile(path).commit(world, HEADER, [record(run, r) for r in rounds for run in range(3)
                                                    if run % world.size == world.rank], on_step=on_step)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> int:
    path, mode, *rest = sys.argv[1:]
    counts = {"entry": 0, "write": 0}
    append, pwrite = journal.JournalFile._append, journal.JournalFile._pwrite
    k = int(rest[0]) if mode in counts else 0

    def counted_append(self, offset: int, data: bytes) -> None:
        counts["entry"] += 1
        if mode == "entry" and counts["entry"] == k:
            raw = journal._entry(offset, data)
            journal._write_all(self._jfd, raw[:len(raw) // 2])  # a torn entry
            _die()
        append(self, offset, data)

    def counted_pwrite(self, view: memoryview, offset: int) -> None:
        counts["write"] += 1
        if mode == "write" and counts["write"] == k:
            journal._write_all(self._fd, view[:max(1, len(view) // 2)], offset)  # a torn write
            _die()
        pwrite(self, view, offset)

    journal.JournalFile._append, journal.JournalFile._pwrite = counted_append, counted_pwrite

    world = Comm(mpi().COMM_WORLD) if launched_under_mpi() else Comm(None)

    def pause(step: str) -> None:
        if mode == "die" and step == rest[0] and world.rank == 0:
            _die()
        if mode == "pause" and step == rest[0]:
            marker = Path(rest[1])
            marker.write_text(step)
            while marker.exists():
                time.sleep(0.01)

    commit(Path(path), range(2, 4), pause, world)
    if mode == "count" and world.rank == 0:
        print(counts["entry"], counts["write"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
