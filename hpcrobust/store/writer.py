"""Committing records to the results file, atomically, from any number of ranks.

Each commit copies the file to a temporary sibling, writes the new records there, marks them
committed, flushes, and renames it over the original. A SIGKILL at any moment therefore leaves
either the old file or the new one, never a half-written one, and every committed round intact.

With h5py built against MPI (and more than one rank), all ranks open the temporary file with the
`mpio` driver: the layout is created collectively and each rank writes the arrays it computed.
Otherwise the records are gathered to rank 0, which writes them. The layout is the same.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

import h5py
import numpy as np

from hpcrobust.errors import UserError
from hpcrobust.parallel.comm import Comm
from hpcrobust.store.schema import COMMITTED, FORMAT, SCHEMA_VERSION, Record


def mpio_available() -> bool:
    return bool(h5py.get_config().mpi)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.commit.tmp")


def clean_stale(path: Path) -> None:
    """A commit that was killed leaves its temporary file; the lock holder may remove it."""
    _tmp_name(path).unlink(missing_ok=True)


def _prepare_tmp(path: Path, header: dict) -> Path:
    tmp = _tmp_name(path)
    if path.exists():
        shutil.copyfile(path, tmp)
    else:
        with h5py.File(tmp, "w") as f:
            for k, v in header.items():
                f.attrs[k] = v
    return tmp


def _finish(tmp: Path, path: Path) -> None:
    _fsync_path(tmp)
    os.replace(tmp, path)
    _fsync_path(path.parent)


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


def commit(world: Comm, path: Path, header: dict, mine: list[Record]) -> int:
    """Collective: every rank calls it with the records it owns. Returns how many were committed."""
    path = Path(path)
    if world.size > 1 and mpio_available():
        metas = [m for part in world.allgather([r.meta() for r in mine]) for m in part]
        if not metas:
            return 0
        tmp = _tmp_name(path)
        if world.rank == 0:
            _prepare_tmp(path, header)
        world.barrier()
        with h5py.File(tmp, "r+", driver="mpio", comm=world.raw) as f:
            for m in metas:
                _layout(f, m)
            for rec in mine:
                _fill(f, rec)
            f.flush()
            world.barrier()
            for m in metas:
                f[m["path"]].attrs[COMMITTED] = 1
        if world.rank == 0:
            _finish(tmp, path)
        world.barrier()
        return len(metas)
    parts = world.gather(mine, root=0)
    n = 0
    if world.rank == 0:
        recs = [r for part in parts for r in part]
        n = len(recs)
        if recs:
            tmp = _prepare_tmp(path, header)
            with h5py.File(tmp, "r+") as f:
                for rec in recs:
                    _layout(f, rec.meta())
                    _fill(f, rec)
                f.flush()
                for rec in recs:
                    f[rec.path].attrs[COMMITTED] = 1
            _finish(tmp, path)
    return world.bcast(n)


def check_existing(path: Path, science_hash: str) -> None:
    """A file that exists must be ours and hold this same sweep; then we only add to it."""
    try:
        with h5py.File(path, "r") as f:
            fmt = f.attrs.get("format")
            ver = f.attrs.get("schema_version")
            sh = f.attrs.get("science_hash")
    except OSError:
        raise UserError(f"output {path} exists and is not an HDF5 file; refusing to overwrite it") from None
    if fmt != FORMAT:
        raise UserError(f"output {path} is an HDF5 file from another program; refusing to overwrite it")
    if int(ver) != SCHEMA_VERSION:
        raise UserError(f"output {path} has results schema v{ver}, this hpcrobust writes v{SCHEMA_VERSION}")
    if sh != science_hash:
        raise UserError(f"output {path} holds a sweep with a different config; choose another output")


class SweepLock:
    """One writer per results file: a second sweep on the same file is refused, not interleaved."""

    def __init__(self, path: Path) -> None:
        self.lock_path = Path(str(path) + ".lock")
        self._fh = None

    def acquire(self) -> None:
        self._fh = open(self.lock_path, "a+")
        try:
            fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._fh.close()
            self._fh = None
            raise UserError(f"another sweep is writing {self.lock_path.with_suffix('')}"
                            f" (lock {self.lock_path} is held); wait for it or choose another output") from None
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(f"{os.uname().nodename}:{os.getpid()}\n")
        self._fh.flush()

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None
