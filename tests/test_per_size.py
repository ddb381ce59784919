"""Per-size resources (models.N.ranks / models.N.groups): each size its own groups, the same stored values.

The sweeps run under real `mpiexec` with the tiny xs and s sizes; `submit`, `sbatch` and `plan` are checked for
the job size they ask for, without SLURM.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcrobust.config import config_from_dict, science_hash
from hpcrobust.errors import UserError
from hpcrobust.models.config import ModelConfig
from hpcrobust.parallel.sizes import describe, group_ranks, groups_of_runs, job_nodes, needed_ranks, size_groups
from hpcrobust.store import schema as S
from tests.conftest import reference_sweep, run_cli
from tests.h5compare import assert_same, datasets

# xs: one group of 1 rank (both seeds in turn), s: one group of 2 ranks: 3 ranks in all
PER_SIZE = ["models.0.ranks=1", "models.0.groups=1", "models.1.ranks=2", "models.1.groups=1"]
LOSS_RTOL = 1e-6  # a sharded group sums gradients in another order (tests/test_fsdp.py)


def _models(*pairs: tuple[str, int, int]) -> list[ModelConfig]:
    return [ModelConfig(name_or_path=f"builtin:{n}", ranks=r, groups=g) for n, r, g in pairs]


# ---------------------------------------------------------------- the layout's arithmetic


def test_groups_follow_the_model_order_and_runs_stay_with_their_size():
    sizes = size_groups(_models(("s", 1, 0), ("m", 4, 1)), ranks_per_group=1, n_seeds=2)
    assert describe(sizes) == "s: 2 groups x 1 rank, m: 1 group x 4 ranks"
    assert needed_ranks(sizes) == 6
    assert group_ranks(sizes) == [[0], [1], [2, 3, 4, 5]]
    # runs are model-major: s seed0, s seed1, m seed0, m seed1; m's two seeds share its one group
    assert groups_of_runs(sizes, 2) == [0, 1, 2, 2]
    sizes = size_groups(_models(("s", 0, 2), ("m", 2, 0)), ranks_per_group=3, n_seeds=3)
    assert [(s.ranks, s.groups) for s in sizes] == [(3, 2), (2, 3)]  # 0 = parallel.ranks_per_group / the seeds
    assert groups_of_runs(sizes, 3) == [0, 1, 0, 2, 3, 4]


def test_job_nodes_from_the_sizes():
    models = _models(("s", 1, 0), ("m", 4, 1))
    assert job_nodes(_models(("s", 0, 0)), 1, [2], nodes=3, tasks_per_node=2) == 3  # equal layout: launch.nodes
    assert job_nodes(models, 1, [4], nodes=1, tasks_per_node=4) == 2  # 4 x 1 + 1 x 4 = 8 ranks
    assert job_nodes(models, 1, [4], nodes=2, tasks_per_node=4) == 2
    with pytest.raises(UserError, match=r"needs 6 ranks \(s: 2 groups x 1 rank, m: 1 group x 4 ranks\), not a"
                                        r" whole number of nodes of 4"):
        job_nodes(models, 1, [2], nodes=1, tasks_per_node=4)
    with pytest.raises(UserError, match="launch.nodes: 3, but this config needs 8 ranks"):
        job_nodes(models, 1, [4], nodes=3, tasks_per_node=4)
    with pytest.raises(UserError, match="jobs of an array share one size"):  # shards of 2 and 1 seeds
        job_nodes(models, 1, [2, 1], nodes=1, tasks_per_node=1)
    assert job_nodes(_models(("s", 1, 1), ("m", 4, 1)), 1, [2, 1], nodes=1, tasks_per_node=5) == 1


def test_layout_keys_do_not_change_the_science_hash():
    base = {"output": "x.h5", "models": ["builtin:xs", "builtin:s"]}
    assert science_hash(config_from_dict(base)) == science_hash(config_from_dict(base, PER_SIZE))


@pytest.mark.parametrize("args,needle", [
    (["parallel.shard=true", "models.0.groups=1"], "parallel.shard: sharding needs a size with 2 or more ranks"),
    (["models.1.ranks=-1"], "models.1.ranks: -1 is below the minimum 0"),
    (["models.0.groups=-2"], "models.0.groups: -2 is below the minimum 0"),
])
def test_bad_per_size_values_are_refused(args, needle):
    with pytest.raises(UserError, match=needle):
        config_from_dict({"models": ["builtin:xs", "builtin:s"]}, args)


# ---------------------------------------------------------------- whole sweeps under mpiexec


@pytest.fixture(scope="module")
def reference(tmp_path_factory, family_cache) -> Path:
    """One plain rank: the numbers every layout must store."""
    return reference_sweep(tmp_path_factory.mktemp("per-size"), [], output="one.h5")


def test_three_ranks_per_size_store_the_values_of_one_rank(reference):
    d = reference.parent
    proc = run_cli(["run", "tiny.yaml", "output=three.h5", *PER_SIZE], ranks=3, cwd=d)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3 rank(s) in 2 group(s) (xs: 1 group x 1 rank, s: 1 group x 2 ranks)" in proc.stderr
    assert assert_same(reference, d / "three.h5") > 100
    with h5py.File(d / "three.h5") as f:
        for run, size in (("xs__seed0", 1), ("xs__seed1", 1), ("s__seed0", 2), ("s__seed1", 2)):
            assert f[f"runs/{run}/rounds/0000"].attrs[S.GROUP_SIZE] == size, run
        attempt = f[S.attempt_path(0)].attrs
        assert attempt[S.WORLD_SIZE] == 3 and attempt[S.N_GROUPS] == 2


def test_a_sharded_size_beside_a_whole_one(reference):
    """s sharded with FSDP on 2 ranks, xs whole on 1: xs is bitwise the 1-rank run, s within FSDP's tolerance."""
    d = reference.parent
    proc = run_cli(["run", "tiny.yaml", "output=shard.h5", "--quiet", "parallel.shard=true", *PER_SIZE], ranks=3,
                   cwd=d)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, three = datasets(reference), datasets(d / "shard.h5")
    xs = [k for k in one if k.startswith("runs/xs__") and "@" not in k]
    assert len(xs) > 40
    for k in xs:
        np.testing.assert_array_equal(three[k], one[k], err_msg=k)
    with h5py.File(reference) as f1, h5py.File(d / "shard.h5") as f3:
        for run in ("s__seed0", "s__seed1"):
            r1, r3 = f1[f"runs/{run}/rounds/0000"], f3[f"runs/{run}/rounds/0000"]
            assert r3.attrs[S.GROUP_SIZE] == 2
            assert r3["clean_accuracy"][()] == pytest.approx(r1["clean_accuracy"][()], abs=1.0 / 32 + 1e-9)
            assert r3["train_loss"][()] == pytest.approx(r1["train_loss"][()], rel=LOSS_RTOL)
            for name in ("rt", "gcg"):
                np.testing.assert_allclose(r3[f"attacks/{name}/asr"][()], r1[f"attacks/{name}/asr"][()],
                                           atol=0.25 + 1e-9)
        for name in ("rt", "gcg"):  # every run's strings scored on every other run's model, whole or sharded
            m1, m3 = f1[f"transfer/0000/{name}/asr"][()], f3[f"transfer/0000/{name}/asr"][()]
            assert m1.shape == m3.shape == (4, 4)
            np.testing.assert_allclose(m3, m1, atol=0.25 + 1e-9)


def test_ensemble_gcg_across_groups_of_different_sizes(tiny):
    """The ensemble phase meets across the world: a group of 1 (xs) and a group of 2 (s) attack one string."""
    args = ["seeds=[0]", "attacks.1.ensemble=true", "--quiet"]
    one = run_cli(["run", tiny.name, "output=one.h5", *args], cwd=tiny.parent)
    assert one.returncode == 0, one.stderr[-3000:]
    three = run_cli(["run", tiny.name, "output=three.h5", *args, *PER_SIZE], ranks=3, cwd=tiny.parent)
    assert three.returncode == 0, three.stderr[-3000:]
    assert assert_same(tiny.parent / "one.h5", tiny.parent / "three.h5") > 50
    with h5py.File(tiny.parent / "three.h5") as f:  # one string for both sizes
        tokens = [f[f"runs/{r}/rounds/0000/attacks/gcg/attack_tokens"][()] for r in ("xs__seed0", "s__seed0")]
        np.testing.assert_array_equal(*tokens)


@pytest.mark.parametrize("ranks", [2, 4])
def test_a_world_of_the_wrong_size_is_one_line_and_writes_nothing(tiny, ranks):
    proc = run_cli(["run", tiny.name, *PER_SIZE], ranks=ranks, cwd=tiny.parent)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].endswith(f"this config needs 3 ranks (xs: 1 group x 1 rank, s: 1 group x 2 ranks) but {ranks}"
                             f" were started")
    assert not list(tiny.parent.glob("*.h5")) and not list(tiny.parent.glob("*.ckpt"))


# ---------------------------------------------------------------- what submit, sbatch and plan ask for

GPU = ["launch.slurm_partition=gpu", "launch.tasks_per_node=4", "launch.gpus_per_node=4", "seeds=[0,1,2,3]",
       "models.0.ranks=1", "models.1.ranks=4", "models.1.groups=1"]  # 4 x 1 + 1 x 4 = 8 ranks = 2 nodes of 4


def test_submit_and_sbatch_ask_for_the_sizes_ranks(tiny):
    logs = f"launch.folder={tiny.parent}/logs/%j"
    sub = run_cli(["submit", "--dry-run", tiny.name, logs, *GPU], cwd=tiny.parent, timeout=300)
    assert sub.returncode == 0, sub.stderr
    sb = run_cli(["sbatch", tiny.name, logs, *GPU], cwd=tiny.parent, timeout=300)
    assert sb.returncode == 0, sb.stderr
    for out in (sub.stdout, sb.stdout):
        assert "#SBATCH --nodes=2" in out and "#SBATCH --ntasks-per-node=4" in out, out
        assert "#SBATCH --gpus-per-node=4" in out
    assert not list(tiny.parent.glob("*.h5"))
    plan = run_cli(["plan", tiny.name, "--json", *GPU], cwd=tiny.parent, timeout=300)
    assert plan.returncode == 0, plan.stderr
    job = json.loads(plan.stdout)["jobs"][0]
    assert (job["ranks"], job["nodes"], job["gpus"], job["groups"]) == (8, 2, 8, 5)
    assert job["group_ranks"] == [1, 1, 1, 1, 4]
    assert job["runs_by_group"][4] == ["s__seed0", "s__seed1", "s__seed2", "s__seed3"]
    assert job["runs_by_group"][0] == ["xs__seed0"]


@pytest.mark.parametrize("command", [["submit", "--dry-run"], ["sbatch"], ["plan"]])
def test_a_job_that_is_not_whole_nodes_is_one_line(tiny, command):
    args = [*GPU, "models.0.groups=1"]  # 1 x 1 + 1 x 4 = 5 ranks on nodes of 4
    proc = run_cli([*command, tiny.name, f"launch.folder={tiny.parent}/logs/%j", *args], cwd=tiny.parent,
                   timeout=300)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "needs 5 ranks (xs: 1 group x 1 rank, s: 1 group x 4 ranks), not a whole number of nodes of 4" in lines[0]
    assert not (tiny.parent / "logs").exists()
