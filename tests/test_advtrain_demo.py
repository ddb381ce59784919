"""configs/advtrain_demo.yaml meets its targets: for every size, GCG-suffix ASR (the reference's) at the last round
is at most 0.35 of its round-0 value and clean accuracy stays >= 0.85; the baseline random-token defense is
reported.
Slow (minutes), and only run when HPCROBUST_RUN_DEMO=1 (the quickstart test covers the same code in CI)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from hpcrobust.store.reader import load, load_attacks
from tests.conftest import ROOT, run_cli

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.environ.get("HPCROBUST_RUN_DEMO") != "1", reason="set HPCROBUST_RUN_DEMO=1")]


def test_demo_halves_gcg_asr_and_keeps_accuracy(tmp_path):
    shutil.copy(ROOT / "configs" / "advtrain_demo.yaml", tmp_path / "demo.yaml")
    cache = os.environ.get("HPCROBUST_QUICKSTART_CACHE", str(Path.home() / ".cache" / "hpcrobust"))
    proc = run_cli(["run", "demo.yaml", "--quiet"], cwd=tmp_path, env={"HPCROBUST_CACHE": cache}, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = load(tmp_path / "advtrain_demo.h5")
    gcg = load_attacks(tmp_path / "advtrain_demo.h5").query("attack == 'gcg_suffix'")
    planned = df.groupby("model_label")["rounds"].first()  # the baseline-defense model has 0 adversarial rounds
    assert (planned > 0).sum() >= 2
    for size, g in gcg.groupby("model_label"):  # the seeds' mean per round
        if planned[size] == 0:
            continue
        asr = g.groupby("round").asr.mean().sort_index().to_numpy()
        assert len(asr) == planned[size] + 1 and asr[-1] <= 0.35 * asr[0], (size, asr)
    assert (df.clean_accuracy >= 0.85).all(), df[["run", "round", "clean_accuracy"]]
    r0 = gcg[gcg["round"] == 0].groupby("model_label").asr.mean()
    assert r0["s_rtdef"] < r0["s"]  # the baseline defense lowers round-0 ASR
