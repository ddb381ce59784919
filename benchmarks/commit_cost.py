"""The cost of a commit as the results file grows (the issue's target: it does not grow with the file).

Commits `--commits` records of about `--gb` GB / `--commits` each (2 MB by default) one after the other into
one results file through the real writer (store/writer.py, in place through its rollback journal; one
rank), until the file holds about `--gb` GB, and prints the wall time per commit of the first 10 and the last
10 and their ratio (about 1 when the cost does not grow). Then, side by side on the final file, a few commits
the way the writer used to make them (copy the file to a temporary sibling, write the record there, fsync,
rename it over the file) and the ratio of that old cost to the new one at that size. Disk latency (fsync) makes
single commits noisy, so it also prints what does not depend on the disk: the bytes a commit saved to the
journal (what HDF5 rewrote in place), first 10 against last 10. Usage:

    python benchmarks/commit_cost.py [--out DIR] [--gb 1] [--commits 500] [--old 3] [--keep]

The files go to DIR (default: a temporary folder) and are removed at the end unless --keep.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from hpcrobust.parallel.comm import Comm
from hpcrobust.store import journal, writer
from hpcrobust.store.journal import fsync_path
from hpcrobust.store.results import ResultsFile
from hpcrobust.store.schema import COMMITTED, FORMAT, SCHEMA_VERSION, Record, round_path, run_path

HEADER = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "hpcrobust_version": "bench", "config": "{}",
          "science_hash": "bench"}
RUNS = 10  # records are spread over this many runs, rounds 0, 1, ... of each


def record(i: int, values: np.ndarray) -> Record:
    run = f"run{i % RUNS}"
    return Record(round_path(run, i // RUNS), attrs={"round": i // RUNS},
                  scalars={"clean_accuracy": float(i), "n_params": 10},
                  arrays={"attacks/a/asr": values + i},
                  parent_attrs={run_path(run): {"model": "m", "seed": 0, "run_index": i % RUNS}})


def old_commit(path: Path, rec: Record) -> None:
    """A commit as the writer made it before the journal: a whole copy of the file, written, fsynced, renamed."""
    tmp = path.with_name(f".{path.name}.commit.tmp")
    shutil.copyfile(path, tmp)
    with h5py.File(tmp, "r+") as f:
        writer._layout(f, rec.meta())
        writer._fill(f, rec)
        f.flush()
        f[rec.path].attrs[COMMITTED] = 1
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(path.parent)


def count_journaled(into: list[int]) -> None:
    """Add the bytes each commit saves to its journal to into[-1] (the caller appends a 0 per commit)."""
    append = journal.JournalFile._append

    def counted(self, offset: int, data: bytes) -> None:
        into[-1] += len(data)
        append(self, offset, data)

    journal.JournalFile._append = counted


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="", help="folder for the files (default: a temporary one)")
    ap.add_argument("--gb", type=float, default=1.0, help="size the file grows to, in GB")
    ap.add_argument("--commits", type=int, default=500)
    ap.add_argument("--old", type=int, default=3, help="commits made the old way on the final file")
    ap.add_argument("--keep", action="store_true", help="keep the file")
    args = ap.parse_args()
    if args.commits < 20:
        ap.error("--commits must be at least 20 (the first 10 and the last 10 are compared)")
    n_values = int(args.gb * 1e9 / args.commits / 8)
    values = np.random.default_rng(0).uniform(size=n_values)
    with tempfile.TemporaryDirectory(dir=args.out or None) as tmp:
        path = Path(tmp) / "bench.h5"
        results, world, times, saved = ResultsFile(path), Comm(None), [], []
        count_journaled(saved)
        for i in range(args.commits):
            rec = record(i, values)
            saved.append(0)
            t0 = time.perf_counter()
            results.commit(world, HEADER, [rec])
            times.append(time.perf_counter() - t0)
            if (i + 1) % 100 == 0:
                print(f"  {i + 1} commits, file {path.stat().st_size / 1e9:.2f} GB, last {times[-1] * 1e3:.1f} ms",
                      flush=True)
        size = path.stat().st_size
        first, last = float(np.median(times[:10])), float(np.median(times[-10:]))
        mean_first, mean_last = float(np.mean(times[:10])), float(np.mean(times[-10:]))
        old = []
        for j in range(args.old):
            rec = record(args.commits + j, values)
            t0 = time.perf_counter()
            old_commit(path, rec)
            old.append(time.perf_counter() - t0)
        new_at_size = []
        for j in range(args.old):  # the new way again, on the same file, right after (same cache state)
            rec = record(args.commits + args.old + j, values)
            t0 = time.perf_counter()
            results.commit(world, HEADER, [rec])
            new_at_size.append(time.perf_counter() - t0)
        if args.keep:
            shutil.copyfile(path, Path(args.out or ".") / "bench.h5")
    new_mean, old_mean = float(np.median(new_at_size)), float(np.median(old))
    print(f"{args.commits} commits of {n_values * 8 / 1e6:.1f} MB into one file of {size / 1e9:.2f} GB"
          f" (in {Path(args.out or tempfile.gettempdir())})")
    print(f"per commit, journal (now), median of 10: first 10 {first * 1e3:.1f} ms | last 10 {last * 1e3:.1f} ms |"
          f" last/first {last / first:.2f}  (means {mean_first * 1e3:.1f} / {mean_last * 1e3:.1f} ms)")
    print(f"bytes saved to the journal per commit: first 10 (after the creating one) {np.mean(saved[1:11]):.0f} |"
          f" last 10 {np.mean(saved[-10:]):.0f}")
    print(f"at {size / 1e9:.2f} GB, median of {args.old} commits each: copy + write + rename (before)"
          f" {old_mean * 1e3:.0f} ms | journal (now) {new_mean * 1e3:.1f} ms | before/now {old_mean / new_mean:.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
