"""How records are committed to the results file, atomically, from any number of ranks (see results.py
for the object that owns the file and calls this).

A commit writes into the file in place, through a rollback journal (journal.py): before HDF5 rewrites any
byte that was in the file when the commit began, the original is saved to `<file>.journal` and fsynced.
The new records are laid out, written, marked committed, the file fsynced, and the journal removed: that
removal is the commit point. A SIGKILL at any moment therefore leaves either the old state (the journal is
there; the next writer rolls it back, and readers read through it meanwhile) or the new one, never half, and
every committed round intact. The cost of a commit is what it writes, not the size of the file. The first
commit creates the file whole (a temporary sibling, renamed into place).

The writing rank holds the commit lock (access.py) for the whole commit, so readers wait and then see a
whole commit.

With h5py built against MPI (and more than one rank), rank 0 lays out every record with the arrays' storage
allocated at once and contiguous (so their places in the file are fixed, beyond the old end of the file), and
each rank writes the arrays it computed there itself (positional writes, no HDF5); rank 0 then marks them.
Otherwise the records are gathered to rank 0, which writes them through HDF5. The layout is the same.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import h5py
import numpy as np

from hpcrobust.parallel.comm import Comm
from hpcrobust.store import access, journal
from hpcrobust.store.journal import JournalFile, fsync_path
from hpcrobust.store.schema import COMMITTED, Record

STEPS = ("journaled", "laid out", "written", "marked", "committed")  # what `on_step` hears, in order
RAW_KINDS = "biufS"  # dtypes whose bytes in the file are numpy's (fixed size, native order)


def mpio_available() -> bool:
    return bool(h5py.get_config().mpi)


class _Commit:
    """One commit's target, on the writing rank: the file itself through its journal, under the commit lock,
    or (no file yet) a temporary sibling renamed into place at the end."""

    def __init__(self, path: Path, tmp: Path, header: dict) -> None:
        self.path, self.tmp = path, tmp
        self.new = not path.exists()
        self._lock = ExitStack()
        self.jf: JournalFile | None = None
        if self.new:
            tmp.unlink(missing_ok=True)
            journal.journal_path(path).unlink(missing_ok=True)  # left by a file that was removed: not this one's
            with h5py.File(tmp, "w") as f:
                for k, v in header.items():
                    f.attrs[k] = v
            return
        self._lock.enter_context(access.commit_lock(path))
        try:
            journal.rollback(path)  # a commit killed earlier: undo it first
            self.jf = JournalFile(path)
        except BaseException:
            self._unlock()
            raise

    @property
    def target(self) -> Path:
        """Where the arrays' bytes go."""
        return self.tmp if self.new else self.path

    @property
    def start_length(self) -> int:
        return 0 if self.jf is None else self.jf.length

    @contextmanager
    def h5(self) -> Iterator[h5py.File]:
        """The target open in HDF5; on leaving, every byte HDF5 wrote is in the file (not yet fsynced)."""
        with h5py.File(self.tmp if self.jf is None else self.jf, "r+") as f:
            yield f
        if self.jf is not None:
            self.jf.flush()

    def finish(self) -> None:
        if self.jf is None:
            fsync_path(self.tmp)
            os.replace(self.tmp, self.path)
            fsync_path(self.path.parent)
        else:
            self.jf.commit()
            self.jf = None
        self._unlock()

    def abandon(self) -> None:
        """After an error: the file goes back to its state before the commit (nothing was committed)."""
        if self.jf is not None:
            self.jf.close()
            self.jf = None
            journal.rollback(self.path)
        elif self.new:
            self.tmp.unlink(missing_ok=True)
        self._unlock()

    def _unlock(self) -> None:
        self._lock.close()


def _early() -> h5py.h5p.PropDCID:
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return dcpl


def _layout(f: h5py.File, meta: dict, early: bool = False) -> None:
    """Create a record's groups, attrs, scalars and empty arrays (`early`: their storage allocated now)."""
    for gpath, attrs in sorted(meta["parent_attrs"].items()):
        g = f.require_group(gpath)
        for k, v in attrs.items():
            g.attrs[k] = v
    if meta.get("amend"):  # attack arrays added to a committed round: the round's group and mark stay
        g = f[meta["path"]]
        if not g.attrs.get(COMMITTED, 0):
            raise ValueError(f"{meta['path']}: arrays can only be added to a committed round")
        for k in meta["arrays"]:
            if k in g:  # written by an attempt whose queue did not learn it finished: the same values again
                del g[k]
    else:
        if meta["path"] in f:  # a rerun of an uncommitted record: start it afresh
            del f[meta["path"]]
        g = f.create_group(meta["path"])
        for k, v in meta["attrs"].items():
            g.attrs[k] = v
        g.attrs[COMMITTED] = 0
    for k, v in sorted(meta["scalars"].items()):
        g.create_dataset(k, data=np.float64(v) if isinstance(v, float) else v)
    for k, (shape, dtype) in sorted(meta["arrays"].items()):
        g.create_dataset(k, shape=shape, dtype=np.dtype(dtype), **({"dcpl": _early()} if early else {}))


def _fill(f: h5py.File, rec: Record) -> None:
    g = f[rec.path]
    for k, v in rec.arrays.items():
        if v.size:
            g[k][...] = v


def _places(f: h5py.File, metas: list[dict], c: _Commit) -> dict[str, int]:
    """{record path/array: offset in the file} of the arrays the ranks write themselves: contiguous, allocated,
    and stored as numpy lays them out. A place below the commit's start (HDF5 reused space it freed) is saved
    to the journal first."""
    out = {}
    for m in metas:
        for k, (shape, dtype) in m["arrays"].items():
            ds, dt = f[m["path"]][k], np.dtype(dtype)
            off = ds.id.get_offset()
            nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
            if (off is None or not nbytes or dt.kind not in RAW_KINDS or ds.dtype != dt or dt.byteorder == ">"
                    or ds.id.get_storage_size() != nbytes):
                continue
            if off < c.start_length:
                c.jf.protect(off, nbytes)
            out[f"{m['path']}/{k}"] = off
    return out


def _write_raw(target: Path, places: dict[str, int], mine: list[Record]) -> list[tuple[str, str, np.ndarray]]:
    """Write this rank's arrays at their places (C order, the file's dtype) and fsync; return the others."""
    rest = []
    fd = os.open(target, os.O_WRONLY)
    try:
        for rec in mine:
            for k, v in rec.arrays.items():
                off = places.get(f"{rec.path}/{k}")
                if off is None:
                    if v.size:
                        rest.append((rec.path, k, v))
                    continue
                data = np.ascontiguousarray(v).view(np.uint8).reshape(-1)
                done = 0
                while done < len(data):
                    done += os.pwrite(fd, data[done:], off + done)
        os.fsync(fd)
    finally:
        os.close(fd)
    return rest


def commit(world: Comm, path: Path, tmp: Path, header: dict, mine: list[Record],
           on_step: Callable[[str], None] | None = None) -> int:
    """Collective: every rank calls it with the records it owns. Returns how many were committed.

    `on_step(step)` runs at each step of STEPS on the ranks that write (rank 0, or every rank with mpio):
    the lock is held and the journal (or the new file) exists; the new records' groups and empty datasets are
    in the file; their data is written and flushed, unmarked; they are marked and the file closed; the journal
    is gone (committed). Tests pause there to kill a commit half-way.
    """
    step = on_step or (lambda _: None)
    for rec in mine:
        rec.check()
    if world.size > 1 and mpio_available():
        return _commit_parallel(world, path, tmp, header, mine, step)
    parts = world.gather(mine, root=0)
    n = 0
    if world.rank == 0:
        recs = [r for part in parts for r in part]
        n = len(recs)
        if recs:
            c = _Commit(path, tmp, header)
            try:
                step("journaled")
                with c.h5() as f:
                    for rec in recs:
                        _layout(f, rec.meta())
                    f.flush()
                    step("laid out")
                    for rec in recs:
                        _fill(f, rec)
                    f.flush()
                    step("written")
                    for rec in recs:
                        f[rec.path].attrs[COMMITTED] = 1
                step("marked")
                c.finish()
            except BaseException:
                c.abandon()
                raise
            step("committed")
    return world.bcast(n)


def _commit_parallel(world: Comm, path: Path, tmp: Path, header: dict, mine: list[Record],
                     step: Callable[[str], None]) -> int:
    """Rank 0 lays out and marks (through the journal); every rank writes its own arrays' bytes."""
    metas = [m for part in world.allgather([r.meta() for r in mine]) for m in part]
    if not metas:
        return 0
    c, places = None, None
    try:
        if world.rank == 0:
            c = _Commit(path, tmp, header)
        step("journaled")
        if c is not None:
            with c.h5() as f:
                for m in metas:
                    _layout(f, m, early=True)
                places = (str(c.target), _places(f, metas, c))
        target, places = world.bcast(places)
        step("laid out")
        rest = world.gather(_write_raw(Path(target), places, mine), root=0)  # a barrier too
        step("written")
        if c is not None:
            with c.h5() as f:
                for rpath, k, v in (x for part in rest for x in part):
                    f[rpath][k][...] = v
                for m in metas:
                    f[m["path"]].attrs[COMMITTED] = 1
        step("marked")
        if c is not None:
            c.finish()
    except BaseException:
        if c is not None:
            c.abandon()
        raise
    world.barrier()
    step("committed")
    return len(metas)
