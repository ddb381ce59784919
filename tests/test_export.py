"""`hpcrobust export`: the tidy tables of `analysis.load` as Parquet or CSV, merged as `analyze` merges, and
one-line errors for an unusable output folder. Plus the experiment's name in analyze's report and figures."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from hpcrobust.analysis import load
from hpcrobust.analysis.synthetic import SynthSpec, default_sizes, write_synthetic
from hpcrobust.analysis.tidy import TABLES
from tests.conftest import run_cli


def _files(tmp_path: Path, experiment: str = "") -> list[Path]:
    """One sweep split into two files by seed (merged by the loader), as job arrays leave it."""
    return [write_synthetic(tmp_path / f"s{seed}.h5", SynthSpec(sizes=default_sizes(2), seeds=[seed], rounds=1,
                                                               n_examples=16, experiment=experiment))
            for seed in (0, 1)]


def test_export_writes_every_tidy_table_as_parquet_and_csv(tmp_path):
    files = _files(tmp_path, "demo")
    res = load(files)
    assert len(res.sweeps) == 1 and len(res.runs) == 4  # the same merge as analyze: one sweep, both seeds
    expected = {"runs": res.runs, "rounds": res.rounds, "attacks": res.attacks, "asr": res.asr,
                "transfer": res.transfer}
    for fmt, read in (("parquet", pd.read_parquet), ("csv", pd.read_csv)):
        out = tmp_path / f"tables-{fmt}"
        proc = run_cli(["export", *map(str, files), "--out", str(out), "--format", fmt])
        assert proc.returncode == 0, proc.stderr
        assert sorted(p.name for p in out.iterdir()) == sorted(f"{t}.{fmt}" for t in TABLES)
        for name, df in expected.items():
            back = read(out / f"{name}.{fmt}")
            assert list(back.columns) == list(df.columns) and len(back) == len(df), name
            if fmt == "parquet":  # Parquet keeps every value and type
                pd.testing.assert_frame_equal(back, df.reset_index(drop=True), check_dtype=False)
            num = df.select_dtypes("number").columns
            pd.testing.assert_frame_equal(back[num], df[num], check_dtype=False, rtol=1e-9)
        sweeps = read(out / f"sweeps.{fmt}")
        assert sweeps["experiment"].tolist() == ["demo"] and sweeps["n_runs"].tolist() == [4]
    assert "asr.parquet" in proc.stdout or "asr.csv" in proc.stdout


def _unwritable(tmp_path: Path) -> Path:
    """A folder nobody can create: a read-only folder for a normal user; root writes anywhere except /sys."""
    if os.geteuid() == 0:
        target = Path("/sys/hpcrobust-export-test")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        target = ro / "tables"
    try:
        target.mkdir()
    except OSError:
        return target
    target.rmdir()
    pytest.skip(f"{target} turned out to be writable here")


@pytest.mark.parametrize("where,needle", [
    ("file", "exists and is not a folder"),
    ("under_file", "is not a folder"),
    ("unwritable", "cannot write there"),
])
def test_an_unusable_export_folder_is_one_line(tmp_path, where, needle):
    files = _files(tmp_path)
    (tmp_path / "a_file").write_text("x")
    out = {"file": tmp_path / "a_file", "under_file": tmp_path / "a_file" / "tables",
           "unwritable": None}[where] or _unwritable(tmp_path)
    proc = run_cli(["export", *map(str, files), "--out", str(out)])
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("hpcrobust: error: --out") and needle in proc.stderr
    assert not out.is_dir()


@pytest.mark.parametrize("args,needle", [
    (["NOT_H5", "--out", "t"], "is not an HDF5 file"),
    (["MISSING.h5", "--out", "t"], "results file not found"),
    (["GOOD", "--out", "t", "--format", "xlsx"], "argument --format: invalid choice"),
])
def test_bad_export_inputs_write_nothing(tmp_path, args, needle):
    (tmp_path / "NOT_H5").write_text("plain text")
    good = _files(tmp_path)[0]
    args = [str(good) if a == "GOOD" else str(tmp_path / a) if a in ("NOT_H5", "MISSING.h5", "t") else a
            for a in args]
    proc = run_cli(["export", *args])
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and needle in proc.stderr, proc.stderr
    assert not (tmp_path / "t").exists()


def test_the_experiment_name_titles_analyze(tmp_path, monkeypatch):
    from hpcrobust.analysis import analyze, plotting

    titles = []
    save = plotting.Figure.save
    monkeypatch.setattr(plotting.Figure, "save", lambda self, out, **kw: (titles.append(self.fig.get_suptitle()),
                                                                          save(self, out, **kw))[1])
    analyze(_files(tmp_path, "pythia-gcg"), tmp_path / "report", n_boot=10)
    assert (tmp_path / "report" / "report.md").read_text().startswith("# pythia-gcg: hpcrobust analysis\n")
    assert titles and all(t.startswith("pythia-gcg: ") for t in titles), titles
    # two experiments with their own names: the names label the sweeps
    other = write_synthetic(tmp_path / "o.h5", SynthSpec(sizes=default_sizes(2), seeds=[0], rounds=1, n_examples=16,
                                                         experiment="qwen-gcg", train_attack="rt_train",
                                                         train_attack_type="random_token"))
    res = load([tmp_path / "s0.h5", other])
    assert sorted(s.label for s in res.sweeps) == ["pythia-gcg", "qwen-gcg"]
    assert res.title == "pythia-gcg, qwen-gcg"
