"""Sharded models (parallel.shard, PyTorch FSDP over gloo on CPU) under real `mpiexec`.

A group of 2 or 3 ranks holding one model as FSDP shards must give the numbers of one unsharded rank:
- forward passes, candidate scores and GCG gradients exactly (the all-gather restores the exact weights
  and every rank computes with the shapes the unsharded rank uses);
- fine-tuning within the tolerances below: the group sums its micro-batch gradients by reduce-scatter, a different
  summation order from the unsharded rank's, and trains on whole sequences (no shared-prefix pass);
and each rank's parameter + optimizer bytes fall as 1/k.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.conftest import mpiexec, run_cli

DRIVER = Path(__file__).resolve().parent / "fsdp_driver.py"
# Fine-tuning is not bitwise (module docstring). Measured with 3 AdamW steps at lr 3e-3 on the tiny "s" model:
# losses differ by < 1e-8 relative, weights by at most 4e-6 in a handful of elements (AdamW's first steps move a
# weight by about lr whatever its gradient's size, so a gradient near zero can move differently), the rest < 1e-7.
LOSS_RTOL = 1e-6
WEIGHT_ATOL = 1e-5
CLOSE = 1e-7  # at least 99.9% of the weights agree this closely


def _drive(tmp: Path, ranks: int, *extra: str) -> dict[str, np.ndarray]:
    out = tmp / f"r{ranks}{'_'.join(extra)}.npz"
    cmd = [mpiexec(), "-n", str(ranks), sys.executable, str(DRIVER), str(out), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-4000:]
    with np.load(out) as z:
        res = {k: z[k] for k in z.files}
    res["rank_bytes"] = np.load(str(out) + ".ranks.npy")
    return res


@pytest.fixture(scope="module")
def runs(tmp_path_factory, family_cache) -> dict[int, dict[str, np.ndarray]]:
    tmp = tmp_path_factory.mktemp("fsdp")
    return {k: _drive(tmp, k) for k in (1, 2, 3)}


def _weights(r: dict) -> dict[str, np.ndarray]:
    return {k: v for k, v in r.items() if k.startswith("w/")}


@pytest.mark.parametrize("k", [2, 3])
def test_sharded_forward_and_gcg_equal_the_unsharded_rank(runs, k):
    one, sh = runs[1], runs[k]
    np.testing.assert_array_equal(sh["margin0"], one["margin0"])
    np.testing.assert_array_equal(sh["gcg_tokens"], one["gcg_tokens"])
    np.testing.assert_array_equal(sh["gcg_final_loss"], one["gcg_final_loss"])
    np.testing.assert_array_equal(sh["gcg_asr"], one["gcg_asr"])
    np.testing.assert_array_equal(sh["gcg_flops"], one["gcg_flops"])  # padding passes are not counted


@pytest.mark.parametrize("k", [2, 3])
def test_sharded_fine_tuning_matches_the_unsharded_rank(runs, k):
    one, sh = runs[1], runs[k]
    assert np.isfinite(one["train_loss"])
    assert sh["train_loss"] == pytest.approx(float(one["train_loss"]), rel=LOSS_RTOL)
    assert sh["train_flops"][0] == one["train_flops"][0]  # nominal FLOPs: the same work, whoever did it
    w1, wk = _weights(one), _weights(sh)
    assert sorted(w1) == sorted(wk) and len(w1) > 10
    diff = np.concatenate([np.abs(wk[n] - w1[n]).ravel() for n in w1])
    assert diff.max() <= WEIGHT_ATOL
    assert (diff <= CLOSE).mean() >= 0.999
    np.testing.assert_array_equal(sh["pred"], one["pred"])
    np.testing.assert_allclose(sh["margin"], one["margin"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(sh["val_losses"], one["val_losses"], rtol=1e-4, atol=1e-6)


def test_training_changed_the_model(runs):
    """The comparisons above are not between untouched copies: fine-tuning moved the margins."""
    assert np.abs(runs[1]["margin"] - runs[1]["margin0"]).max() > 1e-3


def test_per_rank_parameter_and_optimizer_bytes_fall_as_one_over_k(runs):
    whole = int(runs[1]["rank_bytes"][0])
    assert whole == int(runs[1]["param_bytes"]) + int(runs[1]["optim_bytes"]) > 0
    assert int(runs[1]["optim_bytes"]) == 2 * int(runs[1]["param_bytes"])  # AdamW: two states per weight
    for k in (2, 3):
        per_rank = runs[k]["rank_bytes"]
        assert len(per_rank) == k
        assert int(per_rank.sum()) == whole  # every byte held once, by exactly one rank
        assert per_rank.max() <= whole / k * 1.05, (k, per_rank, whole)


def test_bf16_on_two_ranks(tmp_path, family_cache):
    one = _drive(tmp_path, 1, "--dtype", "bfloat16")
    two = _drive(tmp_path, 2, "--dtype", "bfloat16")
    assert np.isfinite(two["train_loss"]) and np.isfinite(one["train_loss"])
    np.testing.assert_array_equal(two["gcg_tokens"], one["gcg_tokens"])
    assert two["train_loss"] == pytest.approx(float(one["train_loss"]), rel=1e-2)
    assert int(two["param_bytes"]) * 2 <= int(one["param_bytes"]) * 1.05  # half of the float32 master weights each


# ---------------------------------------------------------------- a whole sweep


def _sweep_cfg(tiny: Path, name: str) -> Path:
    cfg = tiny.parent / name
    text = tiny.read_text().replace("seeds: [0, 1]", "seeds: [0]")
    cfg.write_text(text.replace("  - {name_or_path: \"builtin:s\", lr_scale: 0.5}\n", ""))
    return cfg


ADV = ["train_attacks=[{name: rt_train, type: random_token, n_attack_tokens: 5}]", "advtrain.rounds=1",
       "advtrain.attack=rt_train", "advtrain.n_new_examples=12", "advtrain.max_examples=48",
       "advtrain.iterations_start=4", "advtrain.lr=1e-3"]


@pytest.mark.parametrize("extra", [[], ADV], ids=["finetune", "advtrain"])
def test_sharded_sweep_on_two_ranks_matches_one_rank(tiny, extra):
    """A whole `hpcrobust run`: round 0 (and an adversarial round, which starts from the gathered checkpoint)."""
    cfg = _sweep_cfg(tiny, "shard.yaml")
    d = cfg.parent
    one = run_cli(["run", cfg.name, "output=one.h5", "--quiet", *extra], cwd=d)
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_cli(["run", cfg.name, "output=two.h5", "--quiet", "parallel.ranks_per_group=2",
                   "parallel.shard=true", *extra], ranks=2, cwd=d)
    assert two.returncode == 0, two.stderr[-3000:]
    rounds = ["0000", "0001"] if extra else ["0000"]
    with h5py.File(d / "one.h5") as f1, h5py.File(d / "two.h5") as f2:
        assert sorted(f2["runs/xs__seed0/rounds"]) == rounds
        for rnd in rounds:
            r1, r2 = f1[f"runs/xs__seed0/rounds/{rnd}"], f2[f"runs/xs__seed0/rounds/{rnd}"]
            acc1, acc2 = r1["clean_accuracy"][()], r2["clean_accuracy"][()]
            assert acc2 == pytest.approx(acc1, abs=1.0 / 32 + 1e-9)  # at most one of the 32 validation examples
            assert r2["train_loss"][()] == pytest.approx(r1["train_loss"][()], rel=LOSS_RTOL)
            assert r2["flops_nominal"][()] == r1["flops_nominal"][()]
            for name in ("rt", "gcg"):
                a1, a2 = r1[f"attacks/{name}/asr"][()], r2[f"attacks/{name}/asr"][()]
                assert a1.shape == a2.shape
                np.testing.assert_allclose(a2, a1, atol=0.25 + 1e-9)  # at most one attacked example of 4-6
    ckpt = sorted((d / "two.h5.ckpt").rglob("*.safetensors"))
    assert ckpt, "the sharded run's checkpoint is a normal safetensors folder"


def test_two_sharded_groups_of_two_ranks_match_one_rank(tiny):
    """4 ranks in 2 groups (one torch process group each), 2 model sizes: each run sharded on its own group."""
    d = tiny.parent
    (d / "g.yaml").write_text(tiny.read_text().replace("seeds: [0, 1]", "seeds: [0]"))
    one = run_cli(["run", "g.yaml", "output=one.h5", "--quiet"], cwd=d)
    assert one.returncode == 0, one.stderr[-3000:]
    four = run_cli(["run", "g.yaml", "output=four.h5", "--quiet", "parallel.ranks_per_group=2", "parallel.shard=true"],
                   ranks=4, cwd=d)
    assert four.returncode == 0, four.stderr[-3000:]
    for run in ("xs__seed0", "s__seed0"):  # each group's leader saves its checkpoint (world rank 2 included)
        assert list((d / "four.h5.ckpt" / run / "round_0000").glob("*.safetensors")), run
    with h5py.File(d / "one.h5") as f1, h5py.File(d / "four.h5") as f4:
        for run in ("xs__seed0", "s__seed0"):
            r1, r4 = f1[f"runs/{run}/rounds/0000"], f4[f"runs/{run}/rounds/0000"]
            assert r4["clean_accuracy"][()] == pytest.approx(r1["clean_accuracy"][()], abs=1.0 / 32 + 1e-9)
            assert r4["train_loss"][()] == pytest.approx(r1["train_loss"][()], rel=LOSS_RTOL)
            for name in ("rt", "gcg"):
                np.testing.assert_allclose(r4[f"attacks/{name}/asr"][()], r1[f"attacks/{name}/asr"][()],
                                           atol=0.25 + 1e-9)
        for name in ("rt", "gcg"):  # the transfer matrix: each group scores the other run's strings
            m1, m4 = f1[f"transfer/0000/{name}/asr"][()], f4[f"transfer/0000/{name}/asr"][()]
            assert m1.shape == m4.shape == (2, 2)
            np.testing.assert_allclose(m4, m1, atol=0.25 + 1e-9)


@pytest.mark.parametrize("command", [["run"], ["submit", "--cluster", "local", "--dry-run"], ["plan"]])
def test_shard_needs_a_group_of_two_or_more(tiny, command):
    proc = run_cli([command[0], tiny.name, *command[1:], "parallel.shard=true"], cwd=tiny.parent)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "parallel.shard" in proc.stderr


def test_shard_refuses_ensemble_attacks(tiny):
    proc = run_cli(["run", tiny.name, "parallel.shard=true", "parallel.ranks_per_group=2",
                    "attacks.1.ensemble=true"], cwd=tiny.parent)
    assert proc.returncode == 2
    assert "ensemble" in proc.stderr and proc.stderr.strip().count("\n") == 0


def test_plan_divides_a_sharded_models_memory_by_the_group(tmp_path):
    """`hpcrobust plan` counts 1/k of the weights, gradients and optimizer state per rank with parallel.shard."""
    pythia = Path(__file__).resolve().parents[1] / "configs" / "paper_pythia.yaml"
    args = ["plan", str(pythia), "--json", "--gpu", "h100", "launch.tasks_per_node=4", "launch.gpus_per_node=4",
            "parallel.ranks_per_group=4"]
    whole = json.loads(run_cli(args, cwd=tmp_path).stdout)
    shard = json.loads(run_cli([*args, "parallel.shard=true"], cwd=tmp_path).stdout)
    for w, s in zip(whole["sizes"], shard["sizes"], strict=True):
        assert s["memory"]["optimizer"] == pytest.approx(w["memory"]["optimizer"] / 4)
        assert s["memory"]["gradient_exchange"] == 0 < w["memory"]["gradient_exchange"]
    big_w, big_s = whole["sizes"][-1]["memory"], shard["sizes"][-1]["memory"]  # pythia-12b: 36 layers
    assert big_s["weights"] < big_w["weights"] / 3  # 1/4, plus the gathered embeddings and two layers
    assert any("does not fit" in x and "parallel.shard=true" in x for x in whole["warnings"])
    assert not any("pythia-12b does not fit" in x for x in shard["warnings"])
