"""The README's quickstart, as a new user runs it: 3 sizes 10x apart, accuracy >= 0.9, 3 adversarial
rounds in which GCG's ASR falls for every size, and the same values from `mpiexec -n 2`. Slow (minutes): it
builds, fine-tunes and adversarially trains the real quickstart sizes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from hpcrobust.store.reader import load, load_attacks
from tests.conftest import ROOT, quickstart_cache, run_cli
from tests.h5compare import assert_same

pytestmark = pytest.mark.slow
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


@pytest.fixture(scope="module")
def quickstart_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("quickstart")
    shutil.copy(QUICKSTART, d / "quickstart.yaml")
    return d


def _env() -> dict:
    return {"HPCROBUST_CACHE": str(quickstart_cache())}


def test_quickstart_meets_its_targets(quickstart_dir):
    proc = run_cli(["run", "quickstart.yaml"], cwd=quickstart_dir, env=_env(), timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = load(quickstart_dir / "results.h5")
    r0 = df[df["round"] == 0]
    assert len(r0) >= 3
    assert r0.n_params.max() / r0.n_params.min() >= 10
    assert (r0.clean_accuracy >= 0.9).all(), r0[["run", "clean_accuracy"]]
    attacks = load_attacks(quickstart_dir / "results.h5")
    for run, g in df.groupby("run"):
        g = g.sort_values("round")
        assert list(g["round"]) == [0, 1, 2, 3], run
        cum = g.defense_flops_cum.to_numpy()
        assert cum[0] == 0 and (np.diff(cum) > 0).all(), (run, cum)
        gcg = attacks.query("run == @run and attack == 'gcg_suffix'").sort_values("round").asr.to_numpy()
        assert len(gcg) == 4 and gcg[-1] < gcg[0], (run, gcg)  # adversarial training made GCG weaker


def test_analyze_on_the_quickstart_fits_iterations_from_1_with_the_reference_asr(quickstart_dir, tmp_path):
    """`hpcrobust analyze` on the real quickstart file: every attack's slope is fitted on iterations >= 1 with the
    reference ASR, and the fitted points are exactly those of that definition (recomputed here from the file)."""
    import h5py
    import pandas as pd

    from hpcrobust.analysis.metrics import logit10, ols

    if not (quickstart_dir / "results.h5").exists():
        pytest.skip("needs the 1-rank quickstart above")
    proc = run_cli(["analyze", str(quickstart_dir / "results.h5"), "--out", str(tmp_path / "rep")], timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fits = pd.read_csv(tmp_path / "rep" / "fig2_attack_scaling_fits.csv")
    assert (fits["asr_definition"].str.startswith("reference")).all() and not fits["early_stop"].any()
    assert "iterations ≥ 1" in (tmp_path / "rep" / "report.md").read_text()
    row = fits[(fits["attack"] == "gcg_suffix") & (fits["round"] == 0) & (fits["model_label"] == "s")].iloc[0]
    with h5py.File(quickstart_dir / "results.h5") as f:
        g = f["runs/s__seed0/rounds/0000/attacks/gcg_suffix"]
        asr, flops = g["asr_current"][()], g["flops_nominal"][()]
    t = np.arange(1, len(asr))
    x, y = np.log10(t * flops.sum() / (len(asr) - 1)), logit10(asr[1:])
    ok = (asr[1:] > 0) & (asr[1:] < 1)
    assert row["n_points"] == ok.sum() and row["slope"] == pytest.approx(ols(x[ok], y[ok]).slope, rel=1e-9)


def test_quickstart_under_mpiexec_and_on_slurm_store_the_same_values(quickstart_dir):
    """Rounds 0 and 1 (fine-tuning, three attacks, one adversarial round): `mpiexec -n 2` stores what the 1-rank
    run stored, and round 0 of the same config submitted to SLURM with 2 tasks and --mpi=pmi2 stores what mpiexec
    stored (2-task SLURM jobs with adversarial rounds are compared with 1-rank runs in test_slurm.py)."""
    if not (quickstart_dir / "results.h5").exists():
        pytest.skip("needs the 1-rank quickstart above")
    short = ["advtrain.rounds=1", "parallel.threads_per_rank=1"]
    proc = run_cli(["run", "quickstart.yaml", "output=b.h5", *short, "--quiet"], ranks=2, cwd=quickstart_dir,
                   env=_env(), timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(load(quickstart_dir / "b.h5")["round"].unique()) == [0, 1]
    assert assert_same(quickstart_dir / "results.h5", quickstart_dir / "b.h5", subset=True, root_attrs=False) > 100
    if _slurm_partition() is None:
        pytest.skip("no SLURM cluster is up (bash tests/cluster/slurm_cluster.sh start)")
    sub = run_cli(["submit", "quickstart.yaml", "output=slurm.h5", "advtrain.rounds=0", "parallel.threads_per_rank=1",
                   "launch.slurm_partition=debug", "launch.tasks_per_node=2", "launch.timeout_min=30",
                   f"launch.folder={quickstart_dir}/logs/%j", "--wait"], cwd=quickstart_dir, env=_env(), timeout=1800)
    assert sub.returncode == 0, sub.stdout[-2000:] + sub.stderr[-3000:]
    assert "--mpi=pmi2" in next((quickstart_dir / "logs").rglob("*_submission.sh")).read_text()
    assert sorted(load(quickstart_dir / "slurm.h5")["round"].unique()) == [0]
    assert assert_same(quickstart_dir / "b.h5", quickstart_dir / "slurm.h5", subset=True, root_attrs=False) > 50


def _slurm_partition() -> str | None:
    if shutil.which("sinfo") is None:
        return None
    out = subprocess.run(["sinfo", "-h", "-o", "%R %a"], capture_output=True, text=True, timeout=20).stdout
    return "debug" if "debug up" in out else None
