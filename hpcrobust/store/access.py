"""Who may look at the results file when: a commit excludes readers, so a reader always sees a whole commit.

The lock is a flock on the results file itself (its sweep lock, `<file>.lock`, is held for the whole sweep,
and readers must not wait that long): a commit holds LOCK_EX from before its journal exists until after the
journal is gone; a reader holds LOCK_SH while it has the file open, so it waits while a commit is in
progress (commits are short) and a commit waits for the readers that have the file open.

A reader that gets the lock and still finds a journal (journal.py) found the leftovers of a writer that was
killed mid-commit; it reads the state before that commit through journal.RollbackView, without writing to
the file (it may be read-only; the next writer rolls the commit back for good).

Where flock is not available (Lustre mounted without `flock`), locking is skipped: commits stay atomic on
disk, but a reader may then see a commit in progress.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py

from hpcrobust.store.journal import RollbackView, journal_path, read_journal, rollback

_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def _flock(fd: int, op: int) -> bool:
    try:
        fcntl.flock(fd, op)
    except OSError as exc:
        if exc.errno in _NO_FLOCK:
            return False
        raise
    return True


@contextmanager
def commit_lock(path: Path) -> Iterator[None]:
    """Held by the one writer for a whole commit: no reader has the file open meanwhile."""
    fd = os.open(path, os.O_RDONLY)
    try:
        _flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # unlocks


def recover(path: Path) -> bool:
    """Roll back a commit that was killed (its journal is there), under the commit lock. Returns whether one was."""
    if not journal_path(path).exists():
        return False
    if not path.exists():
        return rollback(path)  # the journal of a file someone removed: nothing to put back
    with commit_lock(path):
        return rollback(path)


@contextmanager
def reading(path: Path) -> Iterator[h5py.File]:
    """The file open for reading, as of its last finished commit (see the module docstring). Raises OSError
    when it cannot be opened or is not HDF5."""
    fd = os.open(path, os.O_RDONLY)
    try:
        _flock(fd, fcntl.LOCK_SH)
        try:
            journal = read_journal(journal_path(path))
        except FileNotFoundError:
            journal = None
        f = h5py.File(RollbackView(fd, journal), "r") if journal is not None else h5py.File(path, "r")
        with f:
            yield f
    finally:
        os.close(fd)
