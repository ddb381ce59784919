"""The HDF5 store: atomic commits, readers that ignore uncommitted records, the pandas loader."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from hpcrobust.errors import UserError
from hpcrobust.parallel.comm import Comm
from hpcrobust.store import reader, writer
from hpcrobust.store.schema import FORMAT, SCHEMA_VERSION, Record, round_path, run_path, text_array

HEADER = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "hpcrobust_version": "t", "config": "{}",
          "science_hash": "abc"}


def _rec(run: str, r: int, acc: float) -> Record:
    return Record(round_path(run, r), attrs={"round": r}, scalars={"clean_accuracy": acc, "n_params": 10},
                  arrays={"attacks/a/asr": np.array([0.0, 0.5]), "attacks/a/attack_text": text_array(["hé", "x"])},
                  parent_attrs={run_path(run): {"model": "m", "seed": 0, "run_index": int(run[-1])}})


def test_commit_and_read_back(tmp_path):
    out = tmp_path / "r.h5"
    w = Comm(None)
    assert writer.commit(w, out, HEADER, [_rec("run0", 0, 0.9), _rec("run1", 0, 0.8)]) == 2
    assert writer.commit(w, out, HEADER, [_rec("run0", 1, 0.95)]) == 1
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
    writer.commit(Comm(None), out, HEADER, [_rec("run0", 0, 0.9)])
    with h5py.File(out, "r+") as f:  # what a writer killed mid-record would leave, if it wrote in place
        g = f.create_group(round_path("run0", 1))
        g.attrs["committed"] = 0
        g["clean_accuracy"] = 0.1
    assert reader.committed_rounds(out)["run0"] == {0}
    assert list(reader.load(out)["round"]) == [0]
    writer.commit(Comm(None), out, HEADER, [_rec("run0", 1, 0.7)])  # a rerun replaces it
    assert list(reader.load(out).clean_accuracy) == [0.9, 0.7]


def test_killed_commit_leaves_the_old_file(tmp_path):
    out = tmp_path / "r.h5"
    writer.commit(Comm(None), out, HEADER, [_rec("run0", 0, 0.9)])
    tmp = writer._tmp_name(out)
    tmp.write_bytes(b"half a file")  # the temporary file of a commit that was killed
    assert list(reader.load(out)["round"]) == [0]
    writer.clean_stale(out)
    assert not tmp.exists()


def test_existing_file_checks(tmp_path):
    out = tmp_path / "r.h5"
    writer.commit(Comm(None), out, HEADER, [_rec("run0", 0, 0.9)])
    writer.check_existing(out, "abc")
    with pytest.raises(UserError, match="different config"):
        writer.check_existing(out, "other")
    with pytest.raises(UserError, match="not an hpcrobust results file"):
        other = tmp_path / "o.h5"
        with h5py.File(other, "w") as f:
            f["x"] = 1
        reader.open_results(other)


def test_lock_refuses_a_second_writer(tmp_path):
    a, b = writer.SweepLock(tmp_path / "r.h5"), writer.SweepLock(tmp_path / "r.h5")
    a.acquire()
    with pytest.raises(UserError, match="another sweep is writing"):
        b.acquire()
    a.release()
    b.acquire()
    b.release()
