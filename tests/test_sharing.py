"""Candidates shared through collectives (invariants 1 and 2): RandomToken broadcast to every size,
ensemble GCG across sizes, the transfer matrix, identical files for 1/2/3 ranks, and rank failures."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcrobust.store.reader import committed_rounds, load_attacks, load_transfer
from tests.conftest import DATA, mpiexec, run_cli
from tests.h5compare import assert_same

SHARE = DATA / "share.yaml"


def _env() -> dict:
    # The real family recipe (xs and s), in the cache the quickstart test also uses.
    return {"HPCROBUST_CACHE": os.environ.get("HPCROBUST_QUICKSTART_CACHE", str(Path.home() / ".cache" / "hpcrobust"))}


@pytest.fixture(scope="module")
def share_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("share")
    (d / "share.yaml").write_text(SHARE.read_text())
    proc = run_cli(["run", "share.yaml", "output=one.h5", "--quiet"], cwd=d, env=_env(), timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return d


def test_random_token_candidates_are_shared_by_every_size(share_dir):
    with h5py.File(share_dir / "one.h5") as f:
        for seed in (0, 1):
            digests = set()
            for size in ("xs", "s"):
                g = f[f"runs/{size}__seed{seed}/rounds/0000/attacks/rt"]
                assert int(g["shared_candidates"][()]) == 1
                digests.add(g["candidates_sha256"][()].tobytes())
            assert len(digests) == 1  # both sizes scored the same broadcast table
        assert (f["runs/s__seed0/rounds/0000/attacks/rt/candidates_sha256"][()].tobytes()
                != f["runs/s__seed1/rounds/0000/attacks/rt/candidates_sha256"][()].tobytes())


def test_ensemble_adopts_one_suffix_per_seed_and_records_asr_per_size(share_dir):
    with h5py.File(share_dir / "one.h5") as f:
        for seed in (0, 1):
            xs = f[f"runs/xs__seed{seed}/rounds/0000/attacks/gcg_ens"]
            s = f[f"runs/s__seed{seed}/rounds/0000/attacks/gcg_ens"]
            assert np.array_equal(xs["attack_tokens"][()], s["attack_tokens"][()])
            for g in (xs, s):
                assert g["asr"].shape == (5,) and np.all(np.diff(g["asr"][()]) >= 0)
    ens = load_attacks(share_dir / "one.h5").query("attack == 'gcg_ens'")
    assert ens.ensemble.all() and len(ens) == 4
    assert set(ens.model_label) == {"xs", "s"}


def test_transfer_matrix_reads_back_and_its_diagonal_is_each_runs_own_asr(share_dir):
    tr = load_transfer(share_dir / "one.h5")
    attacks = load_attacks(share_dir / "one.h5")
    assert set(tr.attack) == {"rt", "gcg"}  # ensemble strings are shared already: no transfer matrix
    runs = ["xs__seed0", "xs__seed1", "s__seed0", "s__seed1"]
    for name in ("rt", "gcg"):
        m = tr[tr.attack == name].pivot(index="source", columns="target", values="asr")
        assert sorted(m.index) == sorted(runs) and sorted(m.columns) == sorted(runs)
        for run in runs:
            own = attacks.query("run == @run and attack == @name").asr.item()
            diag = m.loc[run, run]
            assert (np.isnan(own) and np.isnan(diag)) or diag == pytest.approx(own), (name, run)
    assert (tr.asr.dropna() > 0).any()  # something transferred: the matrix is not all zeros


@pytest.mark.parametrize("ranks", [2, 3])
def test_rank_counts_store_identical_values(share_dir, ranks):
    proc = run_cli(["run", "share.yaml", f"output=n{ranks}.h5", "--quiet"], ranks=ranks, cwd=share_dir,
                   env=_env(), timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert assert_same(share_dir / "one.h5", share_dir / f"n{ranks}.h5") > 100


def test_split_candidate_batches_match_one_rank(share_dir):
    """A group of 3 ranks on 1 run: fewer running examples than ranks, so candidate batches are split."""
    args = ["run", "share.yaml", "seeds=[0]", "models=[{name_or_path: 'builtin:s', lr_scale: 2}]",
            "attacks.1.n_examples=2", "--quiet"]
    ref = run_cli(args + ["output=g1.h5"], cwd=share_dir, env=_env(), timeout=1200)
    assert ref.returncode == 0, ref.stderr[-3000:]
    proc = run_cli(args + ["output=g3.h5", "parallel.ranks_per_group=3"], ranks=3, cwd=share_dir, env=_env(),
                   timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same(share_dir / "g1.h5", share_dir / "g3.h5")


def test_diverged_ranks_are_detected():
    code = ("from hpcrobust.parallel.comm import world; from hpcrobust.parallel.collectives import ranks_agree;"
            "w = world(); same = ranks_agree(w, 'x'); diff = ranks_agree(w, str(w.rank));"
            "print(f'{w.rank}:{same}:{diff}')")
    proc = subprocess.run([mpiexec(), "-n", "2", sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    # two ranks print at once: their lines may interleave, so pick the records out of the stream
    assert sorted(re.findall(r"\d:(?:True|False):(?:True|False)", proc.stdout)) == ["0:True:False", "1:True:False"]


def test_exception_on_rank_1_ends_every_rank_fast(share_dir):
    """Rank 1 raises as round 0 starts while rank 0 heads into a collective: both end, message once."""
    t0 = time.time()
    proc = run_cli(["run", "share.yaml", "output=fail0.h5", "debug.fail_rank=1", "--quiet"], ranks=2,
                   cwd=share_dir, env=_env(), timeout=120)
    elapsed = time.time() - t0
    assert proc.returncode != 0
    assert proc.stderr.count("injected failure on rank 1 in round 0") == 1, proc.stderr
    assert elapsed < 30, elapsed


@pytest.mark.parametrize("schedule", ["rounds", "queue"])
def test_failure_keeps_the_rounds_committed_before_it(share_dir, schedule):
    """Rank 1 fails as it starts a round 1. Under rounds every run's round 0 was committed together and nothing
    after. Under the queue the run rank 1 was starting keeps round 0, and the other group's run keeps what it had
    committed before the failure ended it: a whole prefix of rounds, none at all when its round 0 was still running
    (the queue hands rank 1 the small run's round 1 as soon as its round 0 is done)."""
    args = ["run", "share.yaml", f"output=fail1_{schedule}.h5", "seeds=[0]", "attacks=[]", "debug.fail_rank=1",
            "debug.fail_round=1", "advtrain.rounds=2", "train_attacks=[{name: rt_train, type: random_token}]",
            "advtrain.attack=rt_train", "advtrain.n_new_examples=8", "advtrain.max_examples=32",
            "advtrain.iterations_start=4", "advtrain.iterations_end=4", f"parallel.schedule={schedule}", "--quiet"]
    proc = run_cli(args, ranks=2, cwd=share_dir, env=_env(), timeout=600)
    assert proc.returncode != 0
    assert proc.stderr.count("injected failure on rank 1 in round 1") == 1, proc.stderr
    done = committed_rounds(share_dir / f"fail1_{schedule}.h5")
    if schedule == "rounds":
        assert done["xs__seed0"] == {0} and done["s__seed0"] == {0}
    else:
        runs = [done.get(k, set()) for k in ("xs__seed0", "s__seed0")]
        assert all(d == set(range(len(d))) for d in runs), done  # whole prefixes of rounds
        assert any(d == {0} for d in runs), done  # the run whose round 1 failed
