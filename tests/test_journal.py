"""In-place commits through the rollback journal (store/journal.py): a commit killed at any moment rolls back
to the file before it, byte for byte; readers see the state before it meanwhile, without touching the file; a
reader concurrent with a commit waits and then sees the whole commit."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcrobust.store import journal
from hpcrobust.store.reader import committed_rounds
from hpcrobust.store.results import ResultsFile
from tests.conftest import ROOT
from tests.journal_driver import commit

DRIVER = [sys.executable, str(ROOT / "tests" / "journal_driver.py")]
SEED = 20261202  # fixes the kill moments


def _dump(path: Path) -> dict:
    """Every dataset and attribute (and the root's), as a reader of results sees them."""
    out = {}
    with ResultsFile(path).open() as f:
        out.update({f"@{k}": v for k, v in f.attrs.items()})

        def visit(name: str, obj) -> None:
            out.update({f"{name}@{k}": v for k, v in obj.attrs.items()})
            if isinstance(obj, h5py.Dataset):
                out[name] = obj[()]
        f.visititems(visit)
    return out


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """A file with rounds 0 and 1 of three runs (before), and the same after the driver's commit (after)."""
    d = tmp_path_factory.mktemp("journal")
    before, after = d / "before.h5", d / "after.h5"
    assert commit(before, range(0, 1)) == 3 and commit(before, range(1, 2)) == 3
    shutil.copyfile(before, after)
    proc = subprocess.run([*DRIVER, str(after), "count"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    entries, writes = map(int, proc.stdout.split())
    assert entries >= 3 and writes > entries  # HDF5 rewrote some old bytes in place, and wrote new ones
    assert not journal.journal_path(after).exists()
    return {"before": before, "after": after, "entries": entries, "writes": writes,
            "before_dump": _dump(before), "after_dump": _dump(after)}


def test_the_commit_added_exactly_the_new_rounds(files):
    b, a = files["before_dump"], files["after_dump"]
    assert set(b) < set(a) and all(np.array_equal(np.asarray(b[k]), np.asarray(a[k])) for k in b)
    assert {k: sorted(v) for k, v in committed_rounds(files["after"]).items() if k.startswith("run")} == {
        f"run{i}": [0, 1, 2, 3] for i in range(3)}


def _moments(n: int, rng: np.random.Generator, k: int = 6) -> list[int]:
    """The first and last, and `k` drawn between."""
    return sorted({1, n, *rng.integers(1, n + 1, size=k).tolist()})


def test_a_commit_killed_at_random_moments_rolls_back_byte_for_byte(files, tmp_path):
    rng = np.random.default_rng(SEED)
    original = files["before"].read_bytes()
    killed = tmp_path / "killed.h5"
    tried = []
    for mode in ("entry", "write"):
        for k in _moments(files[{"entry": "entries", "write": "writes"}[mode]], rng):
            shutil.copyfile(files["before"], killed)
            proc = subprocess.run([*DRIVER, str(killed), mode, str(k)], capture_output=True, text=True, cwd=ROOT,
                                  timeout=120)
            assert proc.returncode == -signal.SIGKILL, (mode, k, proc.stderr)
            assert journal.journal_path(killed).exists()
            left = killed.read_bytes()
            assert _equal(_dump(killed), files["before_dump"]), (mode, k)  # a reader, before any recovery ...
            assert killed.read_bytes() == left  # ... reads through the journal, writing nothing
            ResultsFile(killed).clean_stale()  # what the next writer does first
            assert not journal.journal_path(killed).exists()
            assert killed.read_bytes() == original, (mode, k)
            assert commit(killed, range(2, 4)) == 6 and _equal(_dump(killed), files["after_dump"])
            tried.append((mode, k))
    assert len(tried) >= 6, tried
    print(f"\nkilled at {tried} (of {files['entries']} journal entries, {files['writes']} writes)")


def test_a_reader_waits_for_a_commit_in_progress_then_sees_all_of_it(files, tmp_path):
    live, marker = tmp_path / "live.h5", tmp_path / "paused"
    shutil.copyfile(files["before"], live)
    writer = subprocess.Popen([*DRIVER, str(live), "pause", "written", str(marker)], cwd=ROOT,
                              stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert writer.poll() is None and time.monotonic() < deadline, writer.stderr.read()
            time.sleep(0.01)
        code = ("import sys; from hpcrobust.store.reader import committed_rounds;"
                " print(sorted(committed_rounds(sys.argv[1])['run0']))")
        reader = subprocess.Popen([sys.executable, "-c", code, str(live)], cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        time.sleep(2.0)
        assert reader.poll() is None  # blocked while the commit holds the lock
        marker.unlink()  # the writer goes on: marks, commits, unlocks
        out, err = reader.communicate(timeout=60)
        assert reader.returncode == 0, err
        assert out.strip() == "[0, 1, 2, 3]"  # the whole commit, not half of it
        assert writer.wait(timeout=60) == 0
    finally:
        writer.kill()
        writer.wait()
    assert _equal(_dump(live), files["after_dump"])


def test_journal_file_undoes_any_writes_and_truncations(tmp_path):
    """The journal alone, on random bytes: random overlapping writes, growth and truncations below and above the
    original end; rollback restores the original, and RollbackView shows it meanwhile."""
    rng = np.random.default_rng(SEED)
    path = tmp_path / "f.bin"
    for trial in range(20):
        original = rng.integers(0, 256, int(rng.integers(1, 5000)), dtype=np.uint8).tobytes()
        path.write_bytes(original)
        jf = journal.JournalFile(path)
        for _ in range(int(rng.integers(1, 30))):
            if rng.uniform() < 0.15:
                jf.truncate(int(rng.integers(0, 2 * len(original))))
            else:
                jf.seek(int(rng.integers(0, len(original) + 100)))
                jf.write(rng.integers(0, 256, int(rng.integers(1, 700)), dtype=np.uint8).tobytes())
            if rng.uniform() < 0.3:
                jf.flush()
        if rng.uniform() < 0.7:
            jf.flush()
        jf.close()  # killed before the commit point (what was held and not flushed never reached the file)
        with open(path, "rb") as fh:
            view = journal.RollbackView(fh.fileno(), journal.read_journal(journal.journal_path(path)))
            assert view.read() == original, trial
            view.seek(len(original) // 3)
            assert view.read(50) == original[len(original) // 3:][:50]
        assert journal.rollback(path) and path.read_bytes() == original, trial
        assert not journal.journal_path(path).exists() and not journal.rollback(path)


def test_a_torn_journal_header_means_nothing_was_written(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 100)
    jpath = journal.journal_path(path)
    jpath.write_bytes(journal.MAGIC[:5])
    assert journal.read_journal(jpath) is None
    assert journal.rollback(path) and path.read_bytes() == b"x" * 100 and not jpath.exists()


def test_a_failed_commit_rolls_back_at_once(files, tmp_path, monkeypatch):
    """An error (not a kill) inside the commit: the file is as before, with no journal left."""
    out = tmp_path / "r.h5"
    shutil.copyfile(files["before"], out)
    original = out.read_bytes()

    def fail(step: str) -> None:
        if step == "written":
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        commit(out, range(2, 4), on_step=fail)
    assert out.read_bytes() == original and not journal.journal_path(out).exists()
    assert os.stat(out).st_size == len(original)
