"""Counted FLOPs against torch's own FlopCounterMode: forward, backward, and a cached candidate batch."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from hpcrobust.config import ModelConfig, load_config
from hpcrobust.models.loading import load_classifier
from tests.conftest import TINY


@pytest.fixture
def clf(family_cache):
    cfg = load_config(TINY)
    c = load_classifier(ModelConfig(name_or_path="builtin:s"), cfg.family, torch.device("cpu"), seed=0)
    # FlopCounterMode does not see inside CPU flash attention; eager attention is plain matmuls it counts.
    c.model.set_attn_implementation("eager")
    return c


def _torch_flops(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def _close(ours: int, theirs: int) -> None:
    assert theirs > 0 and abs(ours - theirs) / theirs <= 0.10, (ours, theirs)


def test_forward(clf):
    ids = torch.randint(1, 300, (8, 40))
    before = clf.meter.total.snapshot()
    theirs = _torch_flops(lambda: clf.logits(ids))
    spent = clf.meter.total.since(before)
    _close(spent.actual, theirs)
    assert spent.nominal == 2 * clf.n_params * ids.numel()


def test_forward_and_backward(clf):
    ids = torch.randint(1, 300, (8, 40))
    clf.set_trainable(True)
    before = clf.meter.total.snapshot()

    def step():
        clf.logits(ids).sum().backward()

    theirs = _torch_flops(step)
    spent = clf.meter.total.since(before)
    _close(spent.actual, theirs)
    assert spent.nominal == 6 * clf.n_params * ids.numel()  # 2NT forward + 4NT backward


def test_cached_candidate_batch(clf):
    prefix = clf.prefix_cache(list(range(5, 45)))
    tails = torch.randint(1, 300, (16, 12))
    before = clf.meter.total.snapshot()
    with torch.no_grad():
        theirs = _torch_flops(lambda: clf.logits_cached(prefix, tail_ids=tails))
    spent = clf.meter.total.since(before)
    _close(spent.actual, theirs)
    assert spent.nominal == 2 * clf.n_params * 16 * (40 + 12)  # as if nothing were cached
    assert spent.actual < spent.nominal
