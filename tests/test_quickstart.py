"""The README's quickstart, as a new user runs it: 3 sizes 10x apart, accuracy >= 0.9, and the
same file from `mpiexec -n 2`. Slow (minutes): it builds and fine-tunes the real quickstart sizes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from hpcrobust.store.reader import load
from tests.conftest import ROOT, run_cli
from tests.h5compare import assert_same

pytestmark = pytest.mark.slow
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


@pytest.fixture(scope="module")
def quickstart_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("quickstart")
    shutil.copy(QUICKSTART, d / "quickstart.yaml")
    return d


def _env() -> dict:
    # The real (default) family recipe, cached outside the test tree so CI builds it once.
    return {"HPCROBUST_CACHE": os.environ.get("HPCROBUST_QUICKSTART_CACHE", str(Path.home() / ".cache" / "hpcrobust"))}


def test_quickstart_meets_its_targets(quickstart_dir):
    proc = run_cli(["run", "quickstart.yaml"], cwd=quickstart_dir, env=_env(), timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = load(quickstart_dir / "results.h5")
    r0 = df[df["round"] == 0]
    assert len(r0) >= 3
    assert r0.n_params.max() / r0.n_params.min() >= 10
    assert (r0.clean_accuracy >= 0.9).all(), r0[["run", "clean_accuracy"]]


def test_quickstart_under_mpiexec_stores_the_same_values(quickstart_dir):
    if not (quickstart_dir / "results.h5").exists():
        pytest.skip("needs the 1-rank quickstart above")
    proc = run_cli(["run", "quickstart.yaml", "output=b.h5", "--quiet"], ranks=2, cwd=quickstart_dir,
                   env=_env(), timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same(quickstart_dir / "results.h5", quickstart_dir / "b.h5")
