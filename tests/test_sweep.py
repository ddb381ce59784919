"""A whole sweep through the CLI: committed rounds, reruns that skip them, and rank-count invariance."""

from __future__ import annotations

import hashlib

import h5py
import numpy as np

from hpcrobust.store.reader import load
from tests.conftest import run_cli
from tests.h5compare import assert_same


def _sha(p) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_plain_run_then_rerun_skips(tiny):
    proc = run_cli(["run", str(tiny)], cwd=tiny.parent)
    assert proc.returncode == 0, proc.stderr
    out = tiny.parent / "out.h5"
    df = load(out)
    assert sorted(df.run) == ["s__seed0", "s__seed1", "xs__seed0", "xs__seed1"]
    assert (df["round"] == 0).all()
    for col in ("clean_accuracy", "train_loss", "flops_nominal", "n_params", "pretrain_flops"):
        assert df[col].notna().all(), col
    # nominal FLOPs of fine-tuning: 6·N·T over the tokens actually trained on
    assert (df.flops_nominal > 0).all() and (df.pretrain_flops > 0).all()
    with h5py.File(out) as f:
        assert f.attrs["format"] == "hpcrobust-results" and "finetune:" in f.attrs["config"]
        assert f.attrs["hpcrobust_version"]
        asr = f["runs/s__seed0/rounds/0000/attacks/rt/asr"][()]
        assert asr.shape == (41,) and np.all(np.diff(asr[~np.isnan(asr)]) >= 0)
        gcg = f["runs/s__seed0/rounds/0000/attacks/gcg"]
        assert gcg["asr_current"].shape == gcg["asr"].shape and gcg["asr_current"][0] == 0
        assert int(gcg["early_stop"][()]) == 0  # the reference's default: every iteration runs
    # N and D are stored beside 6·N·D
    assert np.allclose(df.pretrain_flops, 6 * df.pretrain_n * df.pretrain_tokens)
    assert (tiny.parent / "out.h5.ckpt" / "s__seed0" / "round_0000" / "model.safetensors").is_file()
    before = _sha(out)
    again = run_cli(["run", str(tiny)], cwd=tiny.parent)
    assert again.returncode == 0, again.stderr
    assert _sha(out) == before  # everything was committed already: nothing recomputed or rewritten


def test_rank_counts_store_identical_values(tiny):
    ref = run_cli(["run", str(tiny), "output=one.h5"], cwd=tiny.parent)
    assert ref.returncode == 0, ref.stderr
    for n in (2, 3):
        proc = run_cli(["run", str(tiny), f"output=n{n}.h5", "--quiet"], ranks=n, cwd=tiny.parent)
        assert proc.returncode == 0, proc.stderr
        assert assert_same(tiny.parent / "one.h5", tiny.parent / f"n{n}.h5") > 20


def test_more_ranks_than_runs_does_not_hang(tiny):
    proc = run_cli(["run", str(tiny), "seeds=[0]", "models=[builtin:xs]", "attacks=[]", "--quiet"],
                   ranks=3, cwd=tiny.parent, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert list(load(tiny.parent / "out.h5").run) == ["xs__seed0"]


def test_group_of_two_ranks_matches_one(tiny):
    ref = run_cli(["run", str(tiny), "output=one.h5", "seeds=[0]"], cwd=tiny.parent)
    assert ref.returncode == 0, ref.stderr
    proc = run_cli(["run", str(tiny), "output=g2.h5", "seeds=[0]", "parallel.ranks_per_group=2", "--quiet"],
                   ranks=2, cwd=tiny.parent)
    assert proc.returncode == 0, proc.stderr
    assert_same(tiny.parent / "one.h5", tiny.parent / "g2.h5")
