"""Attacks as plug-ins: one class in one file (here, this test module) registers itself and runs through
a whole sweep; configs are checked against each type's own keys."""

from __future__ import annotations

from dataclasses import dataclass

import h5py
import numpy as np
import pytest

from hpcrobust.attacks import register_attack
from hpcrobust.attacks.base import Attack, AttackEnv, ExampleState
from hpcrobust.attacks.config import AttackConfig, AttackParams
from hpcrobust.attacks.engine import Scores, ScoringEngine
from hpcrobust.attacks.registry import unregister_attack
from hpcrobust.config import config_from_dict, load_config
from hpcrobust.errors import UserError
from hpcrobust.fields import setting
from hpcrobust.sweep.command import run_config
from tests.conftest import run_cli


@dataclass
class RepeatParams(AttackParams):
    stride: int = setting(7, lo=1, doc="distance between the token ids tried")


class RepeatToken(Attack):
    """Iteration t tries one token id, (1 + t * stride) mod V, repeated n_attack_tokens times."""

    Params = RepeatParams

    @classmethod
    def build(cls, a: AttackConfig, env: AttackEnv) -> RepeatToken:
        attack = cls(a, env.seed, env.stream_key(a))
        attack.vocab = len(env.clf.tokenizer)
        return attack

    def start(self, st: ExampleState) -> None:
        st.tokens = np.zeros(0, dtype=np.int64)

    def propose(self, st: ExampleState, step: int, engine: ScoringEngine) -> np.ndarray:
        token = (1 + (step + 1) * self.p.stride) % self.vocab
        return np.full((1, self.cfg.n_attack_tokens), token, dtype=np.int64)

    def update(self, st: ExampleState, step: int, cands: np.ndarray, sc: Scores) -> None:
        if sc.losses[0] < st.best_loss:
            st.best_loss, st.tokens = float(sc.losses[0]), cands[0].copy()
        if sc.flipped[0]:
            st.first_success, st.tokens, st.done = step + 1, cands[0].copy(), True


@pytest.fixture
def repeat_token():
    register_attack("repeat_token")(RepeatToken)
    yield RepeatToken
    unregister_attack("repeat_token")


def test_a_registered_attack_runs_through_a_sweep(tiny, repeat_token):
    out = tiny.parent / "plugin.h5"
    cfg = load_config(tiny, [f"output={out}", "seeds=[0]", "models=[builtin:xs, builtin:s]",
                             "parallel.threads_per_rank=1", "attacks=[{name: rep, type: repeat_token, stride: 5,"
                             " n_examples: 6, n_iterations: 8, n_attack_tokens: 3}]"])
    assert cfg.attacks[0].params == RepeatParams(stride=5)
    assert run_config(cfg, quiet=True) == 0
    with h5py.File(out) as f:
        for run in ("xs__seed0", "s__seed0"):
            g = f[f"runs/{run}/rounds/0000/attacks/rep"]
            asr, first = g["asr"][()], g["first_success"][()]
            assert asr.shape == (9,) and np.all(np.diff(asr[~np.isnan(asr)]) >= 0)
            assert g["attack_tokens"].shape[0] == 6
            assert ((first == -1) | ((first >= 1) & (first <= 8))).all()
            assert g["flops_nominal"][()][1:].sum() > 0  # compute counted at the model call
        assert f["transfer/0000/rep/asr"].shape == (2, 2)  # and it takes part in the cross-run phases
        assert "stride: 5" in f.attrs["config"]


def test_each_type_takes_only_its_own_keys(repeat_token):
    with pytest.raises(UserError, match=r"unknown key 'attacks.0.topk' \(a repeat_token attack's own keys: stride\)"):
        config_from_dict({"attacks": [{"name": "r", "type": "repeat_token", "topk": 5}]})
    with pytest.raises(UserError, match=r"attacks.0.stride: 0 is below the minimum 1"):
        config_from_dict({"attacks": [{"name": "r", "type": "repeat_token", "stride": 0}]})
    with pytest.raises(UserError, match=r"unknown key 'attacks.0.search_width' \(a random_token attack's own keys:"
                                        r" early_stop, ascii_only\)"):
        config_from_dict({"attacks": [{"name": "r", "type": "random_token", "search_width": 8}]})
    with pytest.raises(UserError, match=r"attacks.0.type: 'pgd' is not a known attack \(known: beast, gcg,"
                                        r" random_token, repeat_token\)"):
        config_from_dict({"attacks": [{"name": "r", "type": "pgd"}]})


def test_the_training_attack_schedule_is_not_the_users_to_set():
    base = {"advtrain": {"rounds": 2, "attack": "t"}}
    for extra, key in (({"type": "gcg", "n_iterations": 5}, "n_iterations"),
                       ({"type": "random_token", "n_examples": 5}, "n_examples"),
                       ({"type": "beast", "n_attack_tokens": 5}, "n_attack_tokens")):
        with pytest.raises(UserError, match=rf"train_attacks.0.{key}: a training attack's {key} is set by advtrain"):
            config_from_dict({**base, "train_attacks": [{"name": "t", **extra}]})
    cfg = config_from_dict({**base, "train_attacks": [{"name": "t", "type": "gcg", "n_attack_tokens": 5}]})
    assert cfg.train_attacks[0].n_attack_tokens == 5  # GCG's length is its own
    for key in ("n_iterations", "n_examples"):
        assert key not in cfg.train_attacks[0].to_data()  # and the stored config does not show unused values


@pytest.mark.parametrize("overrides,needle", [
    (["task.path=x.jsonl"], "task.path: task 'password_match' is generated"),
    (["models.0.revision=main"], "models.0.revision: built-in sizes have no revisions"),
    (["train_attacks=[{name: t, type: gcg, ensemble: true}]", "advtrain.rounds=1", "advtrain.attack=t"],
     "ensemble is an evaluation option"),
    (["attacks=[{name: r, type: random_token, search_width: 4}]"], "unknown key 'attacks.0.search_width'"),
])
def test_keys_that_would_do_nothing_are_refused_in_one_line(tiny, overrides, needle):
    proc = run_cli(["run", str(tiny), *overrides], cwd=tiny.parent)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert not list(tiny.parent.glob("*.h5*"))
