"""A run whose training diverges stops the sweep with one line and a non-zero exit; the round that diverged is
not committed, the rounds before it stay."""

from __future__ import annotations

import h5py
import pytest

from hpcrobust.store import schema as S
from hpcrobust.store.reader import committed_rounds, load
from tests.conftest import run_cli

# Round 0 fine-tunes normally; round 1 trains at an absurd learning rate, so after its first step the weights are
# ~1e30 and the second step's forward overflows (LayerNorm squares them): a NaN loss, as real divergence gives.
DIVERGE = ["seeds=[0]", "models=[builtin:xs]",
           "attacks=[{name: rt, type: random_token, n_examples: 4, n_iterations: 4, n_attack_tokens: 4}]",
           "train_attacks=[{name: rt_train, type: random_token, n_attack_tokens: 4}]",
           "advtrain.rounds=2", "advtrain.attack=rt_train", "advtrain.n_new_examples=8",
           "advtrain.max_examples=64", "advtrain.iterations_start=2", "advtrain.iterations_end=2",
           "advtrain.lr=1e30"]


@pytest.mark.parametrize("ranks", [1, 2])
def test_divergence_stops_the_sweep_and_commits_nothing_of_that_round(tiny, ranks):
    """Before, a NaN loss trained on and the sweep exited 0 with NaN in the file. Under 2 ranks the second
    group has no run and waits in the commit: the failing group's error must end it too."""
    proc = run_cli(["run", str(tiny), *DIVERGE, "--quiet"], ranks=ranks, cwd=tiny.parent, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("hpcrobust: error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    line = errors[0]
    assert "run xs__seed0 round 1: adversarial training diverged: the training loss is nan" in line, line
    assert "Traceback" not in proc.stderr
    out = tiny.parent / "out.h5"
    done = committed_rounds(out)
    assert done["xs__seed0"] == {0} and all(rounds == {0} for rounds in done.values()), done  # transfer too
    with h5py.File(out, "r") as f:
        assert sorted(f[f"{S.run_path('xs__seed0')}/{S.ROUNDS}"]) == [S.round_name(0)]
    df = load(out)
    assert df["round"].tolist() == [0] and df.train_loss.notna().all()
