"""The experiment's name: a config key (default: the config file's name), stored in the results file, the SLURM
job name of `submit` and `sbatch`; it never changes the science hash (tests/test_datasets.py checks that)."""

from __future__ import annotations

import pytest

from hpcrobust.config import config_from_dict, load_config
from hpcrobust.errors import UserError
from tests.conftest import run_cli


def test_the_name_defaults_to_the_config_file_and_can_be_set(tiny):
    assert load_config(tiny).experiment == "tiny"
    assert load_config(tiny, ["experiment=pythia-gcg"]).experiment == "pythia-gcg"
    tiny.write_text("experiment: from-yaml\n" + tiny.read_text())
    assert load_config(tiny).experiment == "from-yaml"
    with pytest.raises(UserError, match="experiment: a name of at most 128 printable characters"):
        config_from_dict({"experiment": "two\nlines"})


def test_submit_and_sbatch_name_the_slurm_job_after_the_experiment(tiny):
    for extra, name in (([], "hpcrobust-tiny"), (["experiment=pythia gcg/v2"], "hpcrobust-pythia_gcg_v2")):
        sb = run_cli(["sbatch", str(tiny), *extra], cwd=tiny.parent)
        assert sb.returncode == 0, sb.stderr
        assert f"#SBATCH --job-name={name}\n" in sb.stdout
        dry = run_cli(["submit", str(tiny), *extra, "launch.slurm_partition=debug", "--dry-run"], cwd=tiny.parent)
        assert dry.returncode == 0, dry.stderr
        assert f"job_name: {name}" in dry.stdout and f"#SBATCH --job-name={name}\n" in dry.stdout
