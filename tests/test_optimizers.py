"""The reference's optimizer (Adafactor without relative steps or parameter scaling) and its learning-rate
schedules: built as the reference builds them, it trains, and it keeps rank-count invariance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hpcrobust.config import ModelConfig, TaskConfig, load_config
from hpcrobust.models.loading import load_classifier
from hpcrobust.parallel.comm import Comm
from hpcrobust.tasks import load_task
from hpcrobust.tasks.placement import clean_ids
from hpcrobust.training.trainer import TrainSpec, example_losses, lr_factor, make_optimizer, train
from tests.conftest import TINY, run_cli
from tests.h5compare import assert_same


def test_adafactor_is_built_with_the_references_flags():
    """robust_llm/training/state_classes.py:51-55: Adafactor(scale_parameter=False, relative_step=False) at the
    configured lr; with relative_step the lr would be ignored, with scale_parameter it would be scaled per
    parameter by its RMS."""
    p = torch.nn.Parameter(torch.ones(4, 3))
    opt = make_optimizer([p], TrainSpec(1, 1e-5, 8, 8, optimizer="adafactor"))
    assert type(opt).__name__ == "Adafactor"
    d = opt.defaults
    assert (d["lr"], d["relative_step"], d["scale_parameter"], d["warmup_init"]) == (1e-5, False, False, False)
    assert type(make_optimizer([p], TrainSpec(1, 1e-5, 8, 8))).__name__ == "AdamW"


def test_linear_decay_reaches_zero_and_constant_stays():
    """Fine-tuning decays linearly from lr to 0 without warmup (state_classes.py:87-92); rounds keep lr constant."""
    lin = TrainSpec(1, 1e-5, 8, 8, schedule="linear")
    assert [lr_factor(s, 4, lin) for s in range(4)] == [1.0, 0.75, 0.5, 0.25]
    const = TrainSpec(1, 1e-5, 8, 8, schedule="constant")
    assert {lr_factor(s, 4, const) for s in range(4)} == {1.0}


@pytest.fixture(scope="module")
def small(family_cache):
    cfg = load_config(TINY)
    task = load_task(TaskConfig(name="word_length", n_train=32, n_val=8))
    return cfg, task


def test_adafactor_lowers_the_training_loss(small):
    """The tiny test model fits 32 examples in 16 epochs (loss about 0.68 -> 0.01 at lr 1e-2); an optimizer
    that ignored its lr or never stepped would leave the loss near log 2."""
    cfg, task = small
    clf = load_classifier(ModelConfig(name_or_path="builtin:xs"), cfg.family, torch.device("cpu"), seed=0)
    seqs = [clean_ids(clf.tokenizer, e) for e in task.train]
    labels = [e.label for e in task.train]
    before = example_losses(clf, seqs, labels, 32, Comm(None)).mean()
    res = train(clf, seqs, labels, TrainSpec(16, 1e-2, 16, 8, optimizer="adafactor"), Comm(None), 0, ("opt",))
    after = example_losses(clf, seqs, labels, 32, Comm(None)).mean()
    assert res.steps == 32 and np.isfinite(res.mean_loss)
    assert after < 0.3 * before, (before, after)


def test_adafactor_stores_the_same_numbers_for_one_and_two_ranks(tiny):
    """Gradients are summed in micro-batch order before Adafactor's step, so a group of two ranks trains the
    same weights as one rank (invariant 1), with Adafactor's factored second moments as with AdamW's."""
    keys = ["seeds=[0]", "models=[builtin:xs]", "finetune.optimizer=adafactor", "finetune.lr=3e-3",
            "attacks=[{name: rt, type: random_token, n_examples: 4, n_iterations: 8, n_attack_tokens: 4}]"]
    one = run_cli(["run", str(tiny), *keys, "output=one.h5", "--quiet"], cwd=tiny.parent)
    assert one.returncode == 0, one.stderr
    two = run_cli(["run", str(tiny), *keys, "output=two.h5", "parallel.ranks_per_group=2", "--quiet"], ranks=2,
                  cwd=tiny.parent)
    assert two.returncode == 0, two.stderr
    assert assert_same(tiny.parent / "one.h5", tiny.parent / "two.h5") > 5
