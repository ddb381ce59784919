"""The one object that owns a sweep's results file and everything that lives beside it.

    results.h5                  the file (committed to in place, atomically, see writer.py; flock'ed by each commit
                                and by its readers, see access.py)
    results.h5.journal          a commit in progress: the original bytes it overwrites (journal.py); one that a
                                killed commit left is rolled back by the next writer, read through by readers
    .results.h5.commit.tmp      the first commit in progress (the file is created whole, then renamed into place)
    results.h5.lock             one writer at a time (flock); one line says who holds it:
                                "host:pid key=value ..." (ranks, groups, slurm_job), read by `hpcrobust status`
    results.h5.ckpt/<run>/round_RRRR/   what a later round resumes from

The path is resolved first, so a symlink to the file gets the real file's lock and a commit keeps
the link. Whether an existing file may be added to, which rounds are committed, committing and
reading all go through here.
"""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import yaml

from hpcrobust.errors import UserError
from hpcrobust.parallel.comm import Comm
from hpcrobust.store import access, writer
from hpcrobust.store.identity import differences
from hpcrobust.store.schema import ATTEMPTS, COMMITTED, FORMAT, ROUNDS, RUNS, SCHEMA_VERSION, TRANSFER, Record

TRANSFER_KEY = "__transfer__"  # committed_rounds(): the rounds whose transfer matrix is committed


def committed_id(gid) -> bool:
    """The committed mark on a group (low-level id): present and equal to 1. Readers ignore anything else."""
    name = COMMITTED.encode()
    if not h5py.h5a.exists(gid, name):
        return False
    arr = np.empty((), np.int64)
    h5py.h5a.open(gid, name).read(arr)
    return int(arr) == 1


def is_committed(g: h5py.Group) -> bool:
    return committed_id(g.id)


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or held, if `alive` is False) a results file's lock, from its one line."""

    host: str
    pid: int
    alive: bool  # the lock is held now: by a live pid on this host, or (another host) the flock is taken
    details: dict[str, str] = field(default_factory=dict)  # ranks, groups, slurm_job (as written by acquire)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


@dataclass
class _Opened:
    """An open file for `with`: closing it releases the reader's lock (see ResultsFile.open)."""

    file: h5py.File
    stack: ExitStack

    def __enter__(self) -> h5py.File:
        return self.file

    def __exit__(self, *exc) -> None:
        self.stack.close()


class ResultsFile:
    def __init__(self, path: str | Path) -> None:
        p = Path(path).expanduser()
        self.path = p.resolve() if p.parent.exists() else p.absolute()
        self._lock = None

    def __repr__(self) -> str:
        return f"ResultsFile({str(self.path)!r})"

    # ---------------------------------------------------------------- what lives beside it
    @property
    def lock_path(self) -> Path:
        return Path(str(self.path) + ".lock")

    @property
    def tmp_path(self) -> Path:
        return self.path.with_name(f".{self.path.name}.commit.tmp")

    @property
    def checkpoint_root(self) -> Path:
        return Path(str(self.path) + ".ckpt")

    def checkpoint_dir(self, run_key: str, rnd: int) -> Path:
        return self.checkpoint_root / run_key / f"round_{rnd:04d}"

    # ---------------------------------------------------------------- before a sweep writes
    def check_place(self) -> None:
        """A results file can be written here: a file path in an existing folder that takes new files."""
        if self.path.is_dir():
            raise UserError(f"output {self.path} is a folder; give a file path such as {self.path / 'results.h5'}")
        if not self.path.parent.is_dir():
            raise UserError(f"output folder does not exist: {self.path.parent}")
        self._check_folder_writable()

    def check_same_sweep(self, science_hash: str, config: dict | None = None, inputs: dict | None = None) -> None:
        """A file that exists must be ours and hold this same sweep; then we only add to it. `config` and
        `inputs` (this sweep's) let the refusal say what differs."""
        if not self.path.exists():
            return
        try:
            with access.reading(self.path) as f:
                fmt, ver, sh = (f.attrs.get(k) for k in ("format", "schema_version", "science_hash"))
                old_config, old_inputs = (f.attrs.get(k, "") for k in ("config", "inputs"))
        except OSError:
            raise UserError(f"output {self.path} exists and is not an HDF5 file; refusing to overwrite it") from None
        if fmt != FORMAT:
            raise UserError(f"output {self.path} is an HDF5 file from another program; refusing to overwrite it")
        if int(ver) != SCHEMA_VERSION:
            raise UserError(f"output {self.path} has results schema v{ver}, this hpcrobust writes v{SCHEMA_VERSION}")
        if sh != science_hash:
            why = ""
            if config is not None:
                try:
                    keys = differences(yaml.safe_load(old_config) or {}, yaml.safe_load(old_inputs) or {}, config,
                                       inputs or {})
                except yaml.YAMLError:
                    keys = []
                why = f" ({', '.join(keys)} differ)" if keys else ""
            raise UserError(f"output {self.path} holds a sweep with a different config{why}; choose another output")

    def _check_folder_writable(self) -> None:
        """Commits create a journal (the first one a temporary sibling, renamed), so the folder must take a new
        file (checked by making and removing one: permission bits say nothing for root, or on a read-only mount)."""
        try:
            with tempfile.NamedTemporaryFile(dir=self.path.parent, prefix=f".{self.path.name}.probe-"):
                pass
        except OSError as exc:
            raise UserError(f"output folder {self.path.parent} is not writable: {exc.strerror}") from None

    def _busy(self) -> UserError:
        return UserError(f"another sweep is writing {self.path} (lock {self.lock_path} is held); wait for it or"
                         f" choose another output")

    def acquire(self, details: dict[str, object] | None = None) -> None:
        """One writer per file: a second sweep on the same file is refused, not interleaved. The lock's line
        names the holder (host, pid, `details`, and the SLURM job when there is one) for `hpcrobust status`.

        The lock file exists only while a sweep holds it (release removes it). A sweep that opened the file just
        before the holder removed it would lock a file nobody else sees, so after locking, the path must still be
        the file that was locked; otherwise try again.
        """
        for _ in range(100):
            try:
                fh = open(self.lock_path, "a+")
            except OSError as exc:
                raise UserError(f"cannot create the lock {self.lock_path}: {exc.strerror}") from None
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                raise self._busy() from None
            try:
                same = os.stat(self.lock_path).st_ino == os.fstat(fh.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            fh.close()
        else:
            raise OSError(errno.EAGAIN, f"could not lock {self.lock_path}")
        fh.seek(0)
        fh.truncate()
        info = {**(details or {}), **({"slurm_job": os.environ["SLURM_JOB_ID"]} if os.environ.get("SLURM_JOB_ID")
                                         else {})}
        words = [f"{k}={v}" for k, v in info.items() if str(v) and not any(c.isspace() for c in f"{k}{v}")]
        fh.write(" ".join([f"{os.uname().nodename}:{os.getpid()}", *words]) + "\n")
        fh.flush()
        self._lock = fh

    def release(self) -> None:
        """Remove the lock file, then unlock: nothing is left behind, and no second holder can appear."""
        if self._lock is not None:
            self.lock_path.unlink(missing_ok=True)
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def check_not_locked(self) -> None:
        """Refuse if another sweep holds the lock; only probes (read-only), so a dry run writes nothing."""
        if not self.lock_path.is_file():
            return
        with open(self.lock_path) as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fh, fcntl.LOCK_UN)
            except BlockingIOError:
                raise self._busy() from None

    def holder(self) -> LockHolder | None:
        """Who holds the lock, read-only; None when there is no lock file (no sweep is writing, or it ended
        cleanly) or it cannot be read. On this host a pid that is gone means a stale lock (a killed sweep);
        elsewhere the flock is probed (the lock is taken for an instant only if nobody holds it)."""
        try:
            with open(self.lock_path) as fh:
                words = fh.readline().split()
                if not words:  # acquire has created it and is about to lock it and write its line
                    return LockHolder("", -1, True)
                host, _, pid = words[0].rpartition(":")
                details = dict(w.split("=", 1) for w in words[1:] if "=" in w)
                pid_n = int(pid) if pid.isdigit() else -1
                if host == os.uname().nodename and pid_n > 0:
                    return LockHolder(host, pid_n, _pid_alive(pid_n), details)
                try:
                    fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    return LockHolder(host, pid_n, True, details)
                fcntl.flock(fh, fcntl.LOCK_UN)
                return LockHolder(host, pid_n, False, details)
        except OSError:  # no lock file (or one that cannot be read or locked here): nothing known about a holder
            return None

    @property
    def journal_path(self) -> Path:
        return access.journal_path(self.path)

    def clean_stale(self) -> None:
        """A commit that was killed leaves its journal (or, the first one, its temporary file): the lock holder
        rolls the commit back / removes it before anything else."""
        access.recover(self.path)
        self.tmp_path.unlink(missing_ok=True)

    # ---------------------------------------------------------------- writing
    def commit(self, world: Comm, header: dict, mine: list[Record], on_step=None) -> int:
        """Collective: every rank brings the records it owns; they become visible together, atomically
        (`on_step`: see writer.commit)."""
        return writer.commit(world, self.path, self.tmp_path, header, mine, on_step)

    # ---------------------------------------------------------------- reading
    def open(self) -> AbstractContextManager[h5py.File]:
        """`with rf.open() as f`: the file for reading (as of its last finished commit, see access.reading), once
        it is known to be an hpcrobust results file of this schema (checked here, before the `with`). Every reader
        of results goes through here."""
        if not self.path.is_file():
            raise UserError(f"results file not found: {self.path}")
        stack = ExitStack()
        with stack:
            try:
                f = stack.enter_context(access.reading(self.path))
            except OSError:
                raise UserError(f"{self.path} is not an HDF5 file") from None
            if f.attrs.get("format") != FORMAT:
                raise UserError(f"{self.path} is an HDF5 file but not an hpcrobust results file")
            if int(f.attrs.get("schema_version", -1)) != SCHEMA_VERSION:
                ver = f.attrs.get("schema_version")
                raise UserError(f"{self.path} has schema v{ver}; this hpcrobust reads v{SCHEMA_VERSION}")
            return _Opened(f, stack.pop_all())

    def committed_rounds(self) -> dict[str, set[int]]:
        """{run: {rounds}}, plus TRANSFER_KEY for the rounds whose transfer matrix is committed."""
        out: dict[str, set[int]] = {}
        if not self.path.exists():
            return out
        with self.open() as f:
            for run, g in f.get(RUNS, {}).items():
                out[run] = {int(r) for r, rg in g[ROUNDS].items() if is_committed(rg)}
            out[TRANSFER_KEY] = {int(r) for r, g in f.get(TRANSFER, {}).items() if is_committed(g)}
        return out

    def next_attempt(self) -> int:
        """The number of the attempt about to start: one more than the last committed one (0 for a new file; 1 for a
        file written before attempts were recorded)."""
        if not self.path.exists():
            return 0
        with self.open() as f:
            done = [int(a) for a, g in f.get(ATTEMPTS, {}).items() if is_committed(g)]
            if done:
                return max(done) + 1
            return int(any(is_committed(rg) for g in f.get(RUNS, {}).values() for rg in g[ROUNDS].values()))

    def stored_config(self) -> dict:
        with self.open() as f:
            return yaml.safe_load(f.attrs["config"])
