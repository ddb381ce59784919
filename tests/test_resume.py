"""Resume inside a round, with real SIGKILLs: a run killed right after it kept a training step, its training
attack or an evaluation attack goes on from there when rerun, and the file it ends with equals an uninterrupted
run's (every dataset and attribute, to the bit). Also under a group of 2 MPI ranks, and resumed on 1."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.conftest import ROOT, mpiexec, reference_sweep, run_cli
from tests.h5compare import assert_same

DRIVER = ROOT / "tests" / "resume_driver.py"
# one size, one seed: fine-tuning is 8 steps of 32 (256 examples), then one adversarial round of 4 steps
COMMON = ["seeds=[0]", "models=[builtin:xs]", "launch.save_every_min=0",
          "train_attacks=[{name: rt_train, type: random_token, n_attack_tokens: 5}]", "advtrain.rounds=1",
          "advtrain.attack=rt_train", "advtrain.n_new_examples=8", "advtrain.max_examples=32",
          "advtrain.iterations_start=4", "advtrain.iterations_end=4", "advtrain.epochs=4"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, family_cache) -> Path:
    return reference_sweep(tmp_path_factory.mktemp("resume-ref"), COMMON)


def _kill_when_paused(cwd: Path, what: str, k: int, ranks: int = 0, extra: tuple[str, ...] = ()) -> None:
    """Run the driver until it pauses after the k-th kept `what`, then SIGKILL it (every process it started)."""
    marker = cwd / "paused"
    marker.unlink(missing_ok=True)
    cmd = [sys.executable, str(DRIVER), what, str(k), str(marker), "tiny.yaml", *COMMON, *extra, "output=killed.h5"]
    if ranks:
        cmd = [mpiexec(), "-n", str(ranks), *cmd]
    p = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert p.poll() is None, p.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, f"the sweep never kept {what} {k}"
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()


def _rerun(cwd: Path, ranks: int = 0) -> str:
    proc = run_cli(["run", "tiny.yaml", *COMMON, "output=killed.h5"], cwd=cwd, ranks=ranks)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


def _copy_config(tmp_path: Path) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "tiny.yaml").write_text((ROOT / "tests" / "data" / "tiny.yaml").read_text())
    return tmp_path


@pytest.mark.parametrize("k", [3, 10])  # inside fine-tuning (8 steps), inside adversarial training (steps 9-12)
def test_a_kill_inside_training_goes_on_from_the_kept_step(tmp_path, reference, k):
    cwd = _copy_config(tmp_path)
    _kill_when_paused(cwd, "step", k)
    log = _rerun(cwd)
    step = k if k < 8 else k - 7  # fine-tuning keeps steps 1..7 (not its last); the round's steps count again
    assert re.search(rf"training resumed at step {step} of \d+", log), log[-2000:]
    if k > 8:
        assert "training attack rt_train resumed" in log  # kept before its training started
    assert assert_same(reference, cwd / "killed.h5") > 50
    assert not list((cwd / "killed.h5.ckpt").glob("*/round_*.train"))  # removed once the round's checkpoint is saved


def test_a_kill_after_the_training_attack_skips_it(tmp_path, reference):
    cwd = _copy_config(tmp_path)
    _kill_when_paused(cwd, "train_attack", 1)
    log = _rerun(cwd)
    assert "training attack rt_train resumed" in log and "training resumed" not in log
    assert assert_same(reference, cwd / "killed.h5") > 50


@pytest.mark.parametrize("k", [1, 2])  # after round 0's rt (then gcg runs), after its gcg (both are kept)
def test_a_kill_after_an_evaluation_attack_skips_it(tmp_path, reference, k):
    cwd = _copy_config(tmp_path)
    _kill_when_paused(cwd, "eval_attack", k)
    log = _rerun(cwd)
    assert "round 0: resumed after training" in log
    lines = {name: [ln for ln in log.splitlines() if f"round 0: {name} ASR" in ln] for name in ("rt", "gcg")}
    assert all(len(v) == 1 for v in lines.values()), log[-2000:]
    kept = {name: "resumed: kept by an earlier attempt" in v[0] for name, v in lines.items()}
    assert kept == {"rt": True, "gcg": k == 2}  # only what was kept is not attacked again
    assert assert_same(reference, cwd / "killed.h5") > 50


def test_a_group_of_two_killed_inside_training_resumes_on_two_and_on_one_rank(tmp_path, reference):
    """The kept step holds the group's FLOPs (each rank counts its own micro-batches) and one copy of the
    weights; a group of 2 and a single rank go on from it to the same bits."""
    for ranks in (2, 1):
        cwd = _copy_config(tmp_path / f"r{ranks}")
        _kill_when_paused(cwd, "step", 5, ranks=2, extra=("parallel.ranks_per_group=2",))
        extra = ["parallel.ranks_per_group=2"] if ranks == 2 else []
        proc = run_cli(["run", "tiny.yaml", *COMMON, *extra, "output=killed.h5"], cwd=cwd, ranks=ranks)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "training resumed at step 5 of" in proc.stderr
        assert assert_same(reference, cwd / "killed.h5") > 50


# ---------------------------------------------------------------- a sharded (FSDP) group: DCP folders of shards

SHARD = ("parallel.ranks_per_group=2", "parallel.shard=true")
PICK = random.Random(13)  # the kept steps killed at: random, and the same on every run of the suite
# fine-tuning keeps steps 1..7 (saves 1..7); the adversarial round keeps its steps 1..3 (saves 8..10)
SHARDED_KILLS = [PICK.randint(1, 7), PICK.randint(8, 10)]


@pytest.fixture(scope="module")
def sharded_reference(tmp_path_factory, family_cache) -> Path:
    return reference_sweep(tmp_path_factory.mktemp("resume-shard-ref"), [*COMMON, *SHARD], ranks=2)


@pytest.mark.parametrize("k", SHARDED_KILLS, ids=["finetune", "advtrain"])
def test_a_sharded_group_killed_inside_training_goes_on_from_its_shards(tmp_path, sharded_reference, k):
    """Each rank of the group wrote its own shards of the weights and of AdamW's state (torch.distributed.checkpoint);
    the rerun loads them back into the sharded model and ends with the uninterrupted sharded run's bits."""
    cwd = _copy_config(tmp_path)
    _kill_when_paused(cwd, "step", k, ranks=2, extra=SHARD)
    kept = list((cwd / "killed.h5.ckpt").glob("*/round_*.train/steps.dcp"))
    assert len(kept) == 1 and len(list(kept[0].glob("*.distcp"))) == 2, kept  # one shard file per rank
    proc = run_cli(["run", "tiny.yaml", *COMMON, *SHARD, "output=killed.h5"], cwd=cwd, ranks=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    step = k if k < 8 else k - 7
    assert re.search(rf"training resumed at step {step} of \d+", proc.stderr), proc.stderr[-2000:]
    assert assert_same(sharded_reference, cwd / "killed.h5") > 50
    assert not list((cwd / "killed.h5.ckpt").glob("*/round_*.train"))


def test_sharded_steps_kept_by_two_ranks_go_on_in_a_group_of_three(tmp_path, sharded_reference):
    """DCP reshards on load, so the steps a group of 2 kept go on in a group of 3. Not to the bit (FSDP sums the
    gradients in another order on 3 ranks): within the tolerances tests/test_fsdp.py uses for a sharded sweep."""
    from tests.test_fsdp import LOSS_RTOL

    cwd = _copy_config(tmp_path)
    k = SHARDED_KILLS[0]
    _kill_when_paused(cwd, "step", k, ranks=2, extra=SHARD)
    proc = run_cli(["run", "tiny.yaml", *COMMON, "parallel.ranks_per_group=3", "parallel.shard=true",
                    "output=killed.h5"], cwd=cwd, ranks=3)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"training resumed at step {k} of" in proc.stderr, proc.stderr[-2000:]
    with h5py.File(sharded_reference) as f2, h5py.File(cwd / "killed.h5") as f3:
        for rnd in ("0000", "0001"):
            r2, r3 = f2[f"runs/xs__seed0/rounds/{rnd}"], f3[f"runs/xs__seed0/rounds/{rnd}"]
            assert r3["train_loss"][()] == pytest.approx(r2["train_loss"][()], rel=LOSS_RTOL)
            assert r3["flops_nominal"][()] == r2["flops_nominal"][()]  # the resumed FLOPs count the kept steps
            assert r3["clean_accuracy"][()] == pytest.approx(r2["clean_accuracy"][()], abs=1.0 / 32 + 1e-9)
            for name in ("rt", "gcg"):
                np.testing.assert_allclose(r3[f"attacks/{name}/asr"][()], r2[f"attacks/{name}/asr"][()],
                                           atol=0.25 + 1e-9)
