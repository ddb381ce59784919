"""Keep the README true: it documents every config key and every dataset of the results layout."""

from __future__ import annotations

from hpcrobust.config import describe
from hpcrobust.store.schema import ATTACK_ARRAYS, ROUND_SCALARS
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_every_config_key_is_documented():
    missing = [k for k, _, _ in describe() if f"`{k}`" not in README]
    assert not missing, missing


def test_every_dataset_is_documented():
    missing = [k for k in [*ROUND_SCALARS, *ATTACK_ARRAYS] if f"`{k}`" not in README]
    assert not missing, missing


def test_first_commands_set_up_and_run_the_quickstart():
    block = README.split("```bash", 1)[1].split("```", 1)[0].strip().splitlines()
    assert "pip install torch==2.13.0" in block[0] and "[mpich" in block[0]
    assert "hpcrobust run configs/quickstart.yaml" in block[1]
    assert "pytest" in block[2]


def test_generated_tables_are_current():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "readme_tables.py"), "--check"], cwd=ROOT)
    assert proc.returncode == 0, "README tables are stale: run python tools/readme_tables.py"
