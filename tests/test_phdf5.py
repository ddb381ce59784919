"""The parallel-HDF5 write path (h5py's mpio driver), in its own environment (system MPICH).

`.ci/setup_phdf5.sh` builds that environment; `HPCROBUST_PHDF5_PYTHON` points at its python.
The file it writes must hold exactly what the gather-to-rank-0 path writes.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.conftest import run_cli
from tests.h5compare import assert_same

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
