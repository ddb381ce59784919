"""How records are committed to the results file, atomically, from any number of ranks (see results.py
for the object that owns the file and calls this).

Each commit copies the file to a temporary sibling, writes the new records there, marks them
committed, flushes, and renames it over the original. A SIGKILL at any moment therefore leaves
either the old file or the new one, never a half-written one, and every committed round intact.

With h5py built against MPI (and more than one rank), all ranks open the temporary file with the
`mpio` driver: the layout is created collectively and each rank writes the arrays it computed.
Otherwise the records are gathered to rank 0, which writes them. The layout is the same.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

from hpcrobust.parallel.comm import Comm
from hpcrobust.store.schema import COMMITTED, Record


def mpio_available() -> bool:
    return bool(h5py.get_config().mpi)


def fsync_path(path: Path) -> None:
    """Flush a file or a folder (its entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _prepare_tmp(path: Path, tmp: Path, header: dict) -> None:
    if path.exists():
        shutil.copyfile(path, tmp)
        shutil.copymode(path, tmp)  # the replaced file keeps its permissions
    else:
        with h5py.File(tmp, "w") as f:
            for k, v in header.items():
                f.attrs[k] = v


def _finish(tmp: Path, path: Path) -> None:
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(path.parent)


def _layout(f: h5py.File, meta: dict) -> None:
    """Create a record's groups, attrs, scalars and empty arrays (collective under mpio)."""
    for gpath, attrs in sorted(meta["parent_attrs"].items()):
        g = f.require_group(gpath)
        for k, v in attrs.items():
            g.attrs[k] = v
    if meta["path"] in f:  # a rerun of an uncommitted record: start it afresh
        del f[meta["path"]]
    g = f.create_group(meta["path"])
    for k, v in meta["attrs"].items():
        g.attrs[k] = v
    g.attrs[COMMITTED] = 0
    for k, v in sorted(meta["scalars"].items()):
        g.create_dataset(k, data=np.float64(v) if isinstance(v, float) else v)
    for k, (shape, dtype) in sorted(meta["arrays"].items()):
        g.create_dataset(k, shape=shape, dtype=np.dtype(dtype))


def _fill(f: h5py.File, rec: Record) -> None:
    g = f[rec.path]
    for k, v in rec.arrays.items():
        if v.size:
            g[k][...] = v


STEPS = ("copied", "laid out", "written", "marked", "replaced")  # what `on_step` hears, in order


def commit(world: Comm, path: Path, tmp: Path, header: dict, mine: list[Record],
           on_step: Callable[[str], None] | None = None) -> int:
    """Collective: every rank calls it with the records it owns. Returns how many were committed.

    `on_step(step)` runs at each step of STEPS on the ranks that write (rank 0, or every rank with mpio):
    the temporary copy exists; the new records' groups and empty datasets are in it; their data is written
    and flushed, unmarked; they are marked and the copy closed; the copy replaced the file. Tests pause there
    to kill a commit half-way.
    """
    step = on_step or (lambda _: None)
    for rec in mine:
        rec.check()
    if world.size > 1 and mpio_available():
        metas = [m for part in world.allgather([r.meta() for r in mine]) for m in part]
        if not metas:
            return 0
        if world.rank == 0:
            _prepare_tmp(path, tmp, header)
        world.barrier()
        step("copied")
        with h5py.File(tmp, "r+", driver="mpio", comm=world.raw) as f:
            for m in metas:
                _layout(f, m)
            step("laid out")
            for rec in mine:
                _fill(f, rec)
            f.flush()
            world.barrier()
            step("written")
            for m in metas:
                f[m["path"]].attrs[COMMITTED] = 1
        step("marked")
        if world.rank == 0:
            _finish(tmp, path)
        world.barrier()
        step("replaced")
        return len(metas)
    parts = world.gather(mine, root=0)
    n = 0
    if world.rank == 0:
        recs = [r for part in parts for r in part]
        n = len(recs)
        if recs:
            _prepare_tmp(path, tmp, header)
            step("copied")
            with h5py.File(tmp, "r+") as f:
                for rec in recs:
                    _layout(f, rec.meta())
                step("laid out")
                for rec in recs:
                    _fill(f, rec)
                f.flush()
                step("written")
                for rec in recs:
                    f[rec.path].attrs[COMMITTED] = 1
            step("marked")
            _finish(tmp, path)
            step("replaced")
    return world.bcast(n)
