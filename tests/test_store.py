"""The HDF5 store: atomic commits, readers that ignore uncommitted records, the pandas loader."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcrobust.errors import UserError
from hpcrobust.parallel.comm import Comm
from hpcrobust.store import reader
from hpcrobust.store.results import ResultsFile
from hpcrobust.store.schema import FORMAT, SCHEMA_VERSION, Record, round_path, run_path, text_array
from hpcrobust.store.writer import STEPS
from tests.conftest import ROOT

HEADER = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "hpcrobust_version": "t", "config": "{}",
          "science_hash": "abc"}


def _rec(run: str, r: int, acc: float) -> Record:
    return Record(round_path(run, r), attrs={"round": r}, scalars={"clean_accuracy": acc, "n_params": 10},
                  arrays={"attacks/a/asr": np.array([0.0, 0.5]), "attacks/a/attack_text": text_array(["hé", "x"])},
                  parent_attrs={run_path(run): {"model": "m", "seed": 0, "run_index": int(run[-1])}})


def _commit(out, recs: list[Record]) -> int:
    return ResultsFile(out).commit(Comm(None), HEADER, recs)


def test_commit_and_read_back(tmp_path):
    out = tmp_path / "r.h5"
    assert _commit(out, [_rec("run0", 0, 0.9), _rec("run1", 0, 0.8)]) == 2
    assert _commit(out, [_rec("run0", 1, 0.95)]) == 1
    df = reader.load(out)
    assert list(zip(df.run, df["round"], df.clean_accuracy, strict=True)) == [
        ("run0", 0, 0.9), ("run0", 1, 0.95), ("run1", 0, 0.8)]
    with h5py.File(out) as f:
        g = f[round_path("run0", 1)]
        assert g.attrs["committed"] == 1
        assert reader.decode_text(g["attacks/a/attack_text"][()]) == ["hé", "x"]
    assert reader.committed_rounds(out)["run0"] == {0, 1}


def test_uncommitted_rounds_are_invisible(tmp_path):
    out = tmp_path / "r.h5"
    _commit(out, [_rec("run0", 0, 0.9)])
    with h5py.File(out, "r+") as f:  # what a writer killed mid-record would leave, if it wrote in place
        g = f.create_group(round_path("run0", 1))
        g.attrs["committed"] = 0
        g["clean_accuracy"] = 0.1
    assert reader.committed_rounds(out)["run0"] == {0}
    assert list(reader.load(out)["round"]) == [0]
    _commit(out, [_rec("run0", 1, 0.7)])  # a rerun replaces it
    assert list(reader.load(out).clean_accuracy) == [0.9, 0.7]


KILLED_COMMIT = """
import sys, time
from pathlib import Path
import numpy as np
from hpcrobust.parallel.comm import Comm
from hpcrobust.store.results import ResultsFile
from tests.test_store import HEADER, _rec

def pause(step):
    if step == sys.argv[2]:
        Path(sys.argv[1] + ".paused").write_text(step)
        time.sleep(600)

ResultsFile(sys.argv[1]).commit(Comm(None), HEADER, [_rec("run0", 1, 0.7)], on_step=pause)
"""


@pytest.mark.parametrize("step", [*STEPS])
def test_a_commit_killed_half_way_leaves_the_old_file(tmp_path, step):
    out = tmp_path / "r.h5"
    _commit(out, [_rec("run0", 0, 0.9)])
    before = out.read_bytes()
    p = subprocess.Popen([sys.executable, "-c", KILLED_COMMIT, str(out), step], cwd=ROOT)
    deadline = time.monotonic() + 60
    while not Path(f"{out}.paused").exists():
        assert p.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    results = ResultsFile(out)
    done = step == "committed"
    assert results.journal_path.exists() != done and not results.tmp_path.exists()
    left = out.read_bytes()
    assert list(reader.load(out)["round"]) == ([0, 1] if done else [0])  # read through the journal ...
    assert out.read_bytes() == left  # ... without touching the file
    results.clean_stale()  # what the next lock holder does
    assert not results.journal_path.exists()
    assert (out.read_bytes() == before) != done  # rolled back byte for byte, or committed
    assert _commit(out, [_rec("run0", 1, 0.7)]) == 1 and list(reader.load(out)["round"]) == [0, 1]


def test_a_commit_keeps_the_files_permissions(tmp_path):
    out = tmp_path / "r.h5"
    _commit(out, [_rec("run0", 0, 0.9)])
    out.chmod(0o640)
    _commit(out, [_rec("run0", 1, 0.7)])
    assert out.stat().st_mode & 0o777 == 0o640


def test_existing_file_checks(tmp_path):
    out = tmp_path / "r.h5"
    _commit(out, [_rec("run0", 0, 0.9)])
    ResultsFile(out).check_same_sweep("abc")
    with pytest.raises(UserError, match="different config"):
        ResultsFile(out).check_same_sweep("other")
    with pytest.raises(UserError, match="not an hpcrobust results file"):
        other = tmp_path / "o.h5"
        with h5py.File(other, "w") as f:
            f["x"] = 1
        reader.open_results(other)


def test_lock_refuses_a_second_writer(tmp_path):
    a, b = ResultsFile(tmp_path / "r.h5"), ResultsFile(tmp_path / "r.h5")
    a.acquire()
    with pytest.raises(UserError, match="another sweep is writing"):
        b.acquire()
    with pytest.raises(UserError, match="another sweep is writing"):
        b.check_not_locked()  # the probe that `submit --dry-run` makes
    a.release()
    b.check_not_locked()
    b.acquire()
    b.release()


def test_a_link_to_the_file_shares_its_lock_and_stays_a_link(tmp_path):
    out = tmp_path / "r.h5"
    _commit(out, [_rec("run0", 0, 0.9)])
    link = tmp_path / "link.h5"
    link.symlink_to(out)
    a, b = ResultsFile(out), ResultsFile(link)
    assert b.path == a.path and b.lock_path == a.lock_path
    a.acquire()
    with pytest.raises(UserError, match="another sweep is writing"):
        b.acquire()
    a.release()
    assert b.commit(Comm(None), HEADER, [_rec("run0", 1, 0.8)]) == 1
    assert link.is_symlink() and list(reader.load(link)["round"]) == [0, 1]


def test_the_writer_refuses_what_the_schema_does_not_declare(tmp_path):
    out = tmp_path / "r.h5"
    bad = _rec("run0", 0, 0.9)
    bad.scalars["clean_acuracy"] = 0.5  # a typo would otherwise become a new column
    with pytest.raises(ValueError, match="clean_acuracy not declared"):
        _commit(out, [bad])
    bad = _rec("run0", 0, 0.9)
    bad.arrays["attacks/a/asr_curve"] = np.zeros(2)
    with pytest.raises(ValueError, match="attacks/a/asr_curve not declared"):
        _commit(out, [bad])
    assert not out.exists()
