"""The parallel-HDF5 write path (h5py's mpio driver), in its own environment (system MPICH).

`.ci/setup_phdf5.sh` builds that environment; `HPCROBUST_PHDF5_PYTHON` points at its python.
The file it writes must hold exactly what the gather-to-rank-0 path writes.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from hpcrobust.store.journal import journal_path
from hpcrobust.store.results import ResultsFile
from tests.conftest import ROOT, run_cli
from tests.h5compare import assert_same
from tests.journal_driver import commit
from tests.test_journal import _dump, _equal

pytestmark = pytest.mark.phdf5
PY = os.environ.get("HPCROBUST_PHDF5_PYTHON", "")


@pytest.mark.skipif(not PY, reason="HPCROBUST_PHDF5_PYTHON is not set (see .ci/setup_phdf5.sh)")
def test_mpio_path_writes_the_same_file(tiny):
    check = subprocess.run([PY, "-c", "import h5py; print(h5py.get_config().mpi)"], capture_output=True, text=True)
    assert check.stdout.strip() == "True", check.stderr
    mpiexec = shutil.which("mpiexec.mpich") or "/usr/bin/mpiexec"
    ref = run_cli(["run", str(tiny), "output=gather.h5", "--quiet"], ranks=2, cwd=tiny.parent)
    assert ref.returncode == 0, ref.stderr
    proc = subprocess.run([mpiexec, "-n", "2", PY, "-m", "hpcrobust.cli", "run", str(tiny), "output=mpio.h5"],
                          cwd=tiny.parent, capture_output=True, text=True, timeout=900, env={**os.environ})
    assert proc.returncode == 0, proc.stderr
    assert "results writer: parallel HDF5 (mpio)" in proc.stderr
    assert assert_same(tiny.parent / "gather.h5", tiny.parent / "mpio.h5") > 20


@pytest.mark.skipif(not PY, reason="HPCROBUST_PHDF5_PYTHON is not set (see .ci/setup_phdf5.sh)")
def test_mpio_commit_in_place_is_journaled_and_rolls_back_byte_for_byte(tmp_path):
    """Rank 0 lays out through the journal, each rank writes its own arrays' bytes: the file committed by 2 ranks
    holds what 1 rank commits, and a commit killed after every rank wrote its arrays rolls back to the very bytes
    before it (so nothing below the old end of the file changed that the journal did not save)."""
    mpiexec = shutil.which("mpiexec.mpich") or "/usr/bin/mpiexec"
    before, serial = tmp_path / "before.h5", tmp_path / "serial.h5"
    assert commit(before, range(0, 1)) == 3 and commit(before, range(1, 2)) == 3
    shutil.copyfile(before, serial)
    assert commit(serial, range(2, 4)) == 6
    driver = [mpiexec, "-n", "2", PY, str(ROOT / "tests" / "journal_driver.py")]
    for mode in (["count"], ["die", "written"]):
        out = tmp_path / f"{mode[0]}.h5"
        shutil.copyfile(before, out)
        proc = subprocess.run([*driver, str(out), *mode], cwd=ROOT, capture_output=True, text=True, timeout=300)
        if mode == ["count"]:
            assert proc.returncode == 0, proc.stderr
            assert int(proc.stdout.split()[0]) >= 1 and not journal_path(out).exists()
            assert _equal(_dump(out), _dump(serial))
        else:
            assert proc.returncode != 0 and journal_path(out).exists(), proc.stderr
            assert _equal(_dump(out), _dump(before))  # a reader sees the state before
            ResultsFile(out).clean_stale()
            assert out.read_bytes() == before.read_bytes()
