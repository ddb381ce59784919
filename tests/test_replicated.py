"""A group of ranks that each hold the whole model (no parallel.shard): its gradient sums and candidate scores
move as torch.distributed tensors on the device (gloo here, NCCL on GPUs), never as MPI pickles, and in a fixed
order, so 1, 2 and 3 ranks store bit-identical numbers. Under real `mpiexec`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import mpiexec

DRIVER = Path(__file__).resolve().parent / "replicated_driver.py"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, family_cache) -> dict[int, dict[str, np.ndarray]]:
    tmp = tmp_path_factory.mktemp("replicated")
    out = {}
    for k in (1, 2, 3):
        path = tmp / f"r{k}.npz"
        proc = subprocess.run([mpiexec(), "-n", str(k), sys.executable, str(DRIVER), str(path)], capture_output=True,
                              text=True, timeout=900, env=dict(os.environ))
        assert proc.returncode == 0, proc.stderr[-4000:]
        with np.load(path) as z:
            out[k] = {name: z[name] for name in z.files}
    return out


@pytest.mark.parametrize("k", [2, 3])
def test_ordered_sum_adds_in_item_order_whatever_the_rank_count(runs, k):
    """Every case (1 to 8 items, 1 to 1001 elements, items over 12 orders of magnitude) equals the sequential
    sum bit for bit; the reversed order differs in some case, so the check can tell orders apart."""
    res = runs[k]["ordered_sum"]
    assert res[:, 0].all(), res
    assert not res[:, 1].all()


@pytest.mark.parametrize("k", [2, 3])
def test_replicated_group_trains_and_attacks_to_the_same_bits(runs, k):
    one, many = runs[1], runs[k]
    assert many["train_loss"] == one["train_loss"]
    weights = [name for name in one if name.startswith("w/")]
    assert weights and all(np.array_equal(one[name], many[name]) for name in weights)
    for name in ("gcg_final_loss", "gcg_tokens", "gcg_asr"):
        assert np.array_equal(one[name], many[name]), name


@pytest.mark.parametrize("k", [2, 3])
def test_gradients_and_scores_do_not_travel_through_mpi(runs, k):
    """The largest MPI payload of a training run is the step's losses, not a gradient; no attack payload
    carries candidate scores (they used to be pickled: whole-model gradients every micro-batch, 28 GB a step
    for a 7B model)."""
    r = runs[k]
    assert 0 < r["train_payload_max"] < r["grad_bytes"] / 100, (r["train_payload_max"], r["grad_bytes"])
    assert r["attack_payloads"] > 0 and r["attack_payloads_with_scores"] == 0
