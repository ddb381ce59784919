"""Adversarial training in rounds: true ranks, the schedule, compute bookkeeping, and exact resume."""

from __future__ import annotations

import signal
import subprocess
import time

import numpy as np
import pytest

from hpcrobust.config import config_from_dict
from hpcrobust.store.reader import committed_rounds, load
from hpcrobust.training.adversarial import equal_compute_rounds
from hpcrobust.training.pool import Pool, sampling_weights, true_ranks
from tests.conftest import hpcrobust_cmd, reference_sweep, run_cli
from tests.h5compare import assert_same

ADV = ["seeds=[0]", "train_attacks=[{name: rt_train, type: random_token, n_attack_tokens: 5}]",
       "advtrain.rounds=3", "advtrain.attack=rt_train", "advtrain.n_new_examples=12", "advtrain.max_examples=48",
       "advtrain.iterations_start=4", "advtrain.iterations_end=12", "advtrain.lr=1e-3"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, family_cache):
    """The uninterrupted ADV sweep, run once for this module: the tests below check it and resume against it."""
    return reference_sweep(tmp_path_factory.mktemp("advtrain"), ADV)


def test_true_ranks_by_hand():
    # values 30, 10, 20, 10 -> sorted 10, 10, 20, 30: the two 10s share positions 0 and 1
    assert true_ranks(np.array([30.0, 10.0, 20.0, 10.0])).tolist() == [3.0, 0.5, 2.0, 0.5]
    # argsort of [30, 10, 20] is [1, 2, 0]: those are indices, not ranks (the reference bug)
    assert np.argsort([30, 10, 20]).tolist() == [1, 2, 0]
    assert true_ranks(np.array([30.0, 10.0, 20.0])).tolist() == [2.0, 0.0, 1.0]


def test_sampling_weights_by_hand():
    rounds = np.array([1, 1, 2, 3])  # recency ranks 0.5, 0.5, 2, 3
    losses = np.array([0.9, 0.1, 0.5, 0.2])  # loss ranks 3, 0, 2, 1
    w = sampling_weights(rounds, losses, decay=1.0, loss_weight=0.5)
    r = np.array([1.75, 0.25, 2.0, 2.0])
    np.testing.assert_allclose(w, np.exp(r - 2.0))
    pool = Pool()
    pool.add([[1], [2]], [0, 1], 1, [0.9, 0.1])
    pool.add([[3]], [1], 2, [0.5])
    assert pool.sample(3, 1.0, 0.5, np.random.default_rng(0)) == [0, 1, 2]  # everything when n >= size


def test_pool_roundtrip(tmp_path):
    pool = Pool()
    pool.add([[1, 2, 3], [4]], [0, 1], 1, [0.5, 0.25])
    pool.save(tmp_path / "p.npz")
    back = Pool.load(tmp_path / "p.npz")
    assert back.seqs == pool.seqs and back.labels == pool.labels and back.rounds == [1, 1]
    assert back.losses == pool.losses


def test_linear_schedule_and_equal_compute():
    cfg = config_from_dict({}, ["advtrain.rounds=4", "advtrain.iterations_start=8", "advtrain.iterations_end=64",
                                "train_attacks=[{name: g}]", "advtrain.attack=g"])
    # the reference truncates start + i·rate (training_utils.py:85): 8 + int(18.67) = 26, not round()'s 27
    assert [cfg.advtrain.scheduled_iterations(r) for r in (1, 2, 3, 4)] == [8, 26, 45, 64]
    assert equal_compute_rounds(6, [100, 200, 600, 5000]) == [6, 3, 1, 1]


def test_each_size_ramps_over_its_own_rounds():
    """A size with fewer rounds than advtrain.rounds still reaches iterations_end in its last round, as each
    reference run's schedule spans its own num_adversarial_training_rounds; the sweep-wide ramp stays an option."""
    over = ["advtrain.rounds=60", "advtrain.iterations_start=8", "advtrain.iterations_end=64",
            "train_attacks=[{name: g}]", "advtrain.attack=g"]
    adv = config_from_dict({}, over).advtrain
    assert [adv.scheduled_iterations(r, 5) for r in range(1, 6)] == [8, 22, 36, 50, 64]
    assert adv.scheduled_iterations(60, 60) == 64 and adv.scheduled_iterations(2, 60) == 8
    assert adv.scheduled_iterations(5, 5) == adv.scheduled_iterations(60, 60) == 64
    sweep = config_from_dict({}, over + ["advtrain.schedule_per_size=false"]).advtrain
    assert [sweep.scheduled_iterations(r, 5) for r in range(1, 6)] == [8, 8, 9, 10, 11]



def test_a_run_with_fewer_rounds_ends_its_ramp_at_iterations_end(tiny):
    """The sweep passes each run's own number of rounds to the schedule (sweep/round.py)."""
    proc = run_cli(["run", str(tiny), *ADV, "models=[builtin:xs]", "models.0.rounds=2", "attacks=[]", "--quiet"],
                   cwd=tiny.parent)
    assert proc.returncode == 0, proc.stderr
    g = load(tiny.parent / "out.h5").sort_values("round")
    assert list(g["round"]) == [0, 1, 2] and list(g.train_attack_iterations) == [0, 4, 12]

def test_rounds_metrics_and_cumulative_defense_flops(reference):
    df = load(reference)
    for _run, g in df.groupby("run"):
        g = g.sort_values("round")
        assert list(g["round"]) == [0, 1, 2, 3]
        assert list(g.train_attack_iterations) == [0, 4, 8, 12]
        assert (g.defense_flops.iloc[1:] > 0).all() and g.defense_flops.iloc[0] == 0
        np.testing.assert_array_equal(g.defense_flops_cum, np.cumsum(g.defense_flops))
        assert g.finetune_flops.iloc[0] > 0 and (g.finetune_flops.iloc[1:] == 0).all()
        assert list(g.n_adversarial) == [0, 12, 24, 36]  # the pool grows by 12 a round
    ckpt = reference.parent / "ref.h5.ckpt" / "s__seed0" / "round_0003"
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "adversarial_pool.npz").is_file()
    # a saved round can be evaluated again by pointing a config at it
    again = run_cli(["run", "tiny.yaml", f"models=[{ckpt}]", "seeds=[0]", "output=re.h5", "--quiet"],
                    cwd=reference.parent)
    assert again.returncode == 0, again.stderr


def test_resume_after_stop_between_rounds(tiny, reference):
    stopped = run_cli(["run", str(tiny), *ADV, "output=res.h5", "debug.stop_after_round=1", "--quiet"],
                      cwd=tiny.parent)
    assert stopped.returncode == 3, stopped.stderr
    assert committed_rounds(tiny.parent / "res.h5")["s__seed0"] == {0, 1}
    rest = run_cli(["run", str(tiny), *ADV, "output=res.h5", "--quiet"], cwd=tiny.parent)
    assert rest.returncode == 0, rest.stderr
    assert_same(reference, tiny.parent / "res.h5")


def _kill_during(cmd, cwd, out, after_commit_of: int, extra_delay: float) -> None:
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if out.exists():
            try:
                done = committed_rounds(out)
            except Exception:  # noqa: BLE001 - the file is replaced atomically; a retry sees the new one
                done = {}
            if any(after_commit_of in v for k, v in done.items() if k != "__transfer__"):
                break
        time.sleep(0.05)
    time.sleep(extra_delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("delay", [0.3, 1.5])
def test_resume_after_kill_during_a_round(tiny, reference, delay):
    out = tiny.parent / "killed.h5"
    cmd = hpcrobust_cmd() + ["run", str(tiny), *ADV, "output=killed.h5", "--quiet"]
    _kill_during(cmd, tiny.parent, out, after_commit_of=0, extra_delay=delay)
    rest = run_cli(["run", str(tiny), *ADV, "output=killed.h5", "--quiet"], cwd=tiny.parent)
    assert rest.returncode == 0, rest.stderr
    assert_same(reference, out)


@pytest.mark.parametrize("override,needle", [
    (["advtrain.max_adv_fraction=1.5"], "advtrain.max_adv_fraction: 1.5 is above the maximum 1.0"),
    (["models.0.rounds=5"], "models.0.rounds: 5 rounds, but the training-attack schedule"),
    (["advtrain.attack=nope"], "advtrain.attack: 'nope' is not defined"),
])
def test_bad_advtrain_config(tiny, override, needle):
    proc = run_cli(["run", str(tiny), *ADV, *override], cwd=tiny.parent)
    assert proc.returncode == 2 and needle in proc.stderr and proc.stderr.count("\n") == 1
