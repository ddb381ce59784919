"""Out-of-memory back-off (models/backoff.py): every batched step, remembered per run, same results; models
that a rank no longer needs are freed.

Tolerances: a back-off cuts a fixed unit of work (a training micro-batch, an evaluation batch, a scoring
chunk, a sampler batch) into pieces that keep every other shape (padded width, shared prefix), so a
forward-only step's numbers change at most by the rounding of a different matmul kernel for fewer rows
(FORWARD_TOL; measured: 0 for pieces of 2 rows, 6e-8 for pieces of 1 row) and discrete results (chosen
tokens, successes, FLOPs) are compared exactly; training
sums the pieces' gradients, which only reorders float additions: gradients and losses agree within GRAD_TOL
(measured: 2e-8 to 4e-8), and trained weights within WEIGHT_TOL (measured: 1.5e-6 after two AdamW steps at
lr 2e-3; Adam divides by sqrt(v) + 1e-8, which magnifies the reordering of gradients near zero).
"""

from __future__ import annotations

import gc
import re
import weakref

import h5py
import numpy as np
import pytest
import torch

import hpcrobust.sweep.driver as driver
import hpcrobust.training.trainer as trainer
from hpcrobust.attacks.base import AttackEnv, run_attack
from hpcrobust.attacks.engine import ScoringEngine
from hpcrobust.attacks.evaluate import encode_examples
from hpcrobust.attacks.gcg import token_gradient
from hpcrobust.config import AttackConfig, ModelConfig, TaskConfig, load_config
from hpcrobust.models.backoff import Backoff
from hpcrobust.models.loading import load_classifier
from hpcrobust.parallel.comm import Comm
from hpcrobust.sweep.command import run_config
from hpcrobust.sweep.hooks import Hooks
from hpcrobust.tasks import load_task
from hpcrobust.tasks.placement import clean_ids, encode
from hpcrobust.training.trainer import TrainSpec, all_logits, train
from tests.conftest import TINY, run_cli
from tests.h5compare import datasets

SPEC = TrainSpec(1, 2e-3, 32, 16)  # 2 micro-batches of 16 per step
FORWARD_TOL = 1e-6  # a loss or logit computed in a piece of fewer rows
GRAD_TOL = 1e-7  # one micro-batch's gradient, summed from pieces
WEIGHT_TOL = 1e-5  # weights (and whatever they compute) after training on gradients summed from pieces


def oom(what: str) -> torch.cuda.OutOfMemoryError:
    return torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 2.00 GiB ({what})")


@pytest.fixture(scope="module")
def family(family_cache):
    return load_config(TINY).family


@pytest.fixture(scope="module")
def task():
    return load_task(TaskConfig(name="password_match", n_train=64, n_val=24))


def fresh(family, size: str = "s"):
    """The same untrained classifier every time (its head is drawn from the seed)."""
    return load_classifier(ModelConfig(name_or_path=f"builtin:{size}"), family, torch.device("cpu"), seed=0)


def train_seqs(clf, task):
    return [clean_ids(clf.tokenizer, e) for e in task.train], [e.label for e in task.train]


def weights(clf) -> list[torch.Tensor]:
    return [p.detach().clone() for p in clf.model.parameters()]


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


# ---------------------------------------------------------------- training
def test_micro_batch_pieces_sum_to_the_same_gradient(family, task):
    clf = fresh(family)
    seqs, labels = train_seqs(clf, task)
    clf.set_trainable(True)
    grads = {}
    for size in (16, 4, 1):
        clf.model.zero_grad(set_to_none=True)
        loss = trainer.micro_batch_backward(clf, seqs[:16], labels[:16], 32, size)
        grads[size] = (loss, [torch.zeros_like(p) if p.grad is None else p.grad.clone()
                              for p in clf.model.parameters()])
    clf.set_trainable(False)
    for size in (4, 1):
        d = max_diff(grads[16][1], grads[size][1])
        print(f"gradient of one micro-batch in pieces of {size}: max abs difference {d:.2e}")
        assert d < GRAD_TOL
        assert grads[size][0] == pytest.approx(grads[16][0], abs=GRAD_TOL)
    assert max(float(g.abs().max()) for g in grads[16][1]) > 1e-3  # a real gradient, not zeros


def test_training_backs_off_once_and_learns_the_same_weights(family, task):
    ref = fresh(family)
    seqs, labels = train_seqs(ref, task)
    r0 = train(ref, seqs, labels, SPEC, Comm(None), 0, ("t",))
    clf = fresh(family)
    clf.backoff = Backoff(fake_oom_above=4)
    r1 = train(clf, seqs, labels, SPEC, Comm(None), 0, ("t",))
    assert r0.steps == r1.steps == 2
    assert clf.backoff.limits == {"train": 4} and clf.backoff.fakes == 2  # 16, then 8, in the first step only
    d = max_diff(weights(ref), weights(clf))
    print(f"trained weights with and without the back-off: max abs difference {d:.2e}, loss"
          f" {r0.mean_loss:.9f} vs {r1.mean_loss:.9f}")
    assert d < WEIGHT_TOL  # the same weights, within float reordering
    assert r1.mean_loss == pytest.approx(r0.mean_loss, abs=GRAD_TOL)
    assert r1.flops.nominal == r0.flops.nominal  # the failed attempts are not counted
    assert r1.flops.forward_tokens == r0.flops.forward_tokens


def test_an_error_halfway_through_a_step_leaves_nothing_behind(family, task, monkeypatch):
    """A real out-of-memory error in the second micro-batch, after the first one added its gradient: the step is
    redone from zero, and gives bit for bit what a run that used pieces of 4 from the start gives."""
    pieces = fresh(family)
    pieces.backoff = Backoff(fake_oom_above=4)
    seqs, labels = train_seqs(pieces, task)
    want = train(pieces, seqs, labels, SPEC, Comm(None), 0, ("t",))

    real = trainer.batch_logits
    rows: list[int] = []

    def picky(clf, part, shape=None):
        rows.append(len(part))
        if len(part) > 4 and len(rows) > 1:  # the first micro-batch goes through, the second one fails
            raise oom("training")
        return real(clf, part, shape)

    monkeypatch.setattr(trainer, "batch_logits", picky)
    clf = fresh(family)
    got = train(clf, seqs, labels, SPEC, Comm(None), 0, ("t",))
    assert rows[:3] == [16, 16, 8] and clf.backoff.limits == {"train": 4}
    assert max(rows[3:]) == 4  # remembered: no more errors
    assert all(torch.equal(a, b) for a, b in zip(weights(pieces), weights(clf), strict=True))
    assert got.mean_loss == want.mean_loss
    assert (got.flops.nominal, got.flops.actual) == (want.flops.nominal, want.flops.actual)


# ---------------------------------------------------------------- evaluation
def test_evaluation_batches_back_off_to_identical_logits(family, task):
    clf = fresh(family)
    seqs = [clean_ids(clf.tokenizer, e) for e in task.val]
    before = clf.meter.total.snapshot()
    ref = all_logits(clf, seqs, 16, Comm(None))
    spent = clf.meter.total.since(before)
    clf.backoff = Backoff(fake_oom_above=3)
    before = clf.meter.total.snapshot()
    got = all_logits(clf, seqs, 16, Comm(None))
    print(f"evaluation logits in pieces of 2: max abs difference {np.abs(ref - got).max():.2e}")
    np.testing.assert_allclose(got, ref, rtol=0, atol=FORWARD_TOL)
    assert clf.backoff.limits == {"eval": 2} and clf.backoff.fakes == 3  # 16, 8, 4 fail once; then 2 for good
    assert clf.meter.total.since(before).nominal == spent.nominal


# ---------------------------------------------------------------- GCG gradient and attacks
def test_gcg_gradient_drops_other_prefixes_and_gives_the_same_gradient(family, task, monkeypatch):
    clf = fresh(family)
    encs = [encode(clf.tokenizer, task.val[k], "suffix") for k in range(3)]
    tokens = np.array(clf.tokenizer.encode(" x x x x", add_special_tokens=False))
    before = clf.meter.total.snapshot()
    ref = token_gradient(ScoringEngine(clf, 16), 2, encs[2], tokens)
    ref_spent = clf.meter.total.since(before)

    eng = ScoringEngine(clf, 16)
    for k, enc in enumerate(encs):
        eng.prefix(k, enc, count=True)
    real = clf.logits_cached
    failures = []

    def picky(prefix, tail_ids=None, tail_embeds=None):
        out = real(prefix, tail_ids=tail_ids, tail_embeds=tail_embeds)  # counted, then it fails
        if tail_embeds is not None and len(eng._prefix) > 1:  # the gradient, while other prefixes are held
            failures.append(len(eng._prefix))
            raise oom("gradient")
        return out

    monkeypatch.setattr(clf, "logits_cached", picky)
    before = clf.meter.total.snapshot()
    grad = token_gradient(eng, 2, encs[2], tokens)
    assert torch.equal(grad, ref)
    assert failures == [3] and list(eng._prefix) == [2]  # 3 held -> 1
    assert clf.backoff.limits == {"prefix_cache": 1}
    spent = clf.meter.total.since(before)
    assert (spent.nominal, spent.actual) == (ref_spent.nominal, ref_spent.actual)  # the failure is not counted
    eng.prefix(0, encs[0])  # recomputed exactly; the cache holds one prefix for the rest of the run
    assert list(eng._prefix) == [0] and len(failures) == 1
    assert torch.equal(token_gradient(eng, 0, encs[0], tokens), token_gradient(ScoringEngine(clf, 16), 0,
                                                                                 encs[0], tokens))
    assert len(failures) == 1


def attack(**keys) -> AttackConfig:
    return AttackConfig.from_data(keys, "attack")


@pytest.mark.parametrize("kind", ["gcg", "beast"])
def test_attack_backs_off_to_identical_results(family, task, kind):
    """Scoring chunks of 8 in pieces of 2, one cached prefix at a time, BEAST's sampler beams one at a time."""
    own = {"gcg": {"search_width": 16, "topk": 16}, "beast": {"beam_width": 3, "branching": 3,
                                                               "sampler": "builtin:xs"}}[kind]
    a = attack(name=kind, type=kind, n_examples=4, n_iterations=3, n_attack_tokens=3, **own)
    results = []
    for fake in (0, 2):
        clf = fresh(family)
        clf.backoff = Backoff(fake_oom_above=fake)
        env = AttackEnv(0, "eval", "s__seed0", 0, clf, 8, family)
        encs = encode_examples(a, clf.tokenizer, task.val, list(range(4)))
        res = run_attack(a.plugin.build(a, env), ScoringEngine(clf, 8), Comm(None), encs, np.ones(4, dtype=bool))
        results.append((res, clf.backoff))
    (ref, _), (got, backoff) = results
    # GCG: 8 -> 4 -> 2 candidates; BEAST: its first 3 candidates -> 1, its 3 beams -> 1; a third prefix -> 1
    assert backoff.limits == ({"score": 2, "prefix_cache": 1} if kind == "gcg" else
                              {"score": 1, "prefix_cache": 1, "sampler": 1})
    assert all(np.array_equal(x, y) for x, y in zip(ref.tokens, got.tokens, strict=True))
    for name in ("asr", "asr_current", "first_success", "flops_nominal", "flops_actual"):
        np.testing.assert_array_equal(getattr(got, name), getattr(ref, name), err_msg=name)
    d = np.abs(got.final_loss - ref.final_loss).max()
    print(f"{kind} final losses with and without the back-off: max abs difference {d:.2e}")
    assert d < FORWARD_TOL


# ---------------------------------------------------------------- freeing models
def test_models_are_freed_once_no_phase_of_the_round_needs_them(tiny, monkeypatch):
    alive: list[tuple[int, weakref.ref]] = []
    seen: dict[str, list[int]] = {}
    real = driver.run_round

    def tracked(ctx, run, rnd, tables):
        st = real(ctx, run, rnd, tables)
        alive.append((rnd, weakref.ref(st.clf.model)))
        return st

    def count(event: str):
        def fn(ctx, rnd, *rest) -> None:
            gc.collect()
            seen.setdefault(event, []).append(sum(r() is not None for k, r in alive if k == rnd))
        return fn

    monkeypatch.setattr(driver, "run_round", tracked)
    hooks = Hooks()
    hooks.on("runs_done", count("runs_done"))
    hooks.on("commit_step", count("commit"))
    base = [f"output={tiny.parent / 'a.h5'}", "seeds=[0]", "parallel.threads_per_rank=1", "parallel.schedule=rounds"]
    # With attacks, the transfer phase needs both models: they stay until it is done, then go before the commit.
    assert run_config(load_config(tiny, base), quiet=True, hooks=hooks) == 0
    assert seen["runs_done"] == [2] and set(seen["commit"]) == {0}
    # Without attacks no later phase needs a model: each one goes as soon as its run's round is done.
    alive.clear()
    seen.clear()
    cfg = load_config(tiny, [f"output={tiny.parent / 'b.h5'}", "seeds=[0]", "parallel.threads_per_rank=1",
                             "parallel.schedule=rounds", "attacks=[]"])
    assert run_config(cfg, quiet=True, hooks=hooks) == 0
    assert seen["runs_done"] == [0] and set(seen["commit"]) == {0}
    with h5py.File(tiny.parent / "b.h5") as f:
        assert f["runs/s__seed0/rounds/0000"].attrs["committed"] == 1


# ---------------------------------------------------------------- a whole sweep
def close_enough(ref, got) -> float:
    """Every dataset equal, floats within WEIGHT_TOL; the largest float difference. A round's actual training
    FLOPs may only grow: a micro-batch's shared instructions run once per piece."""
    a, b = datasets(ref), datasets(got)
    assert sorted(a) == sorted(b)
    worst = 0.0
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        assert x.shape == y.shape and x.dtype == y.dtype, k
        if re.fullmatch(r"runs/[^/]+/rounds/\d+/flops_actual", k):
            assert y >= x, k
        elif x.dtype.kind == "f":
            np.testing.assert_allclose(y, x, rtol=WEIGHT_TOL, atol=WEIGHT_TOL, equal_nan=True, err_msg=k)
            finite = np.isfinite(x) & np.isfinite(y)
            assert np.array_equal(np.isfinite(x), np.isfinite(y)), k
            worst = max(worst, float(np.abs(x[finite] - y[finite]).max(initial=0)))
        else:
            assert np.array_equal(x, y), k
    return worst


ADV = ["train_attacks=[{name: rt_train, type: random_token, n_attack_tokens: 5}]", "advtrain.rounds=1",
       "advtrain.attack=rt_train", "advtrain.n_new_examples=8", "advtrain.max_examples=32",
       "advtrain.iterations_start=4", "advtrain.iterations_end=4"]


def test_a_sweep_with_fake_out_of_memory_errors_stores_the_same_numbers(tiny):
    """Training micro-batches, evaluation batches and scoring chunks of 16 all back off to 8 (the fake fails
    above 8), once for both rounds of the run; on 1 rank, and on rank 0 of a group of 2 (rank 1 never backs
    off): no collective is missed, and the stored numbers are the same (measured: floats within 6e-8)."""
    common = ["seeds=[0]", "models=[builtin:xs]", *ADV]
    ref = run_cli(["run", str(tiny), "output=ref.h5", *common, "--quiet"], cwd=tiny.parent)
    assert ref.returncode == 0, ref.stderr
    one = run_cli(["run", str(tiny), "output=one.h5", "debug.fake_oom_above=8", *common], cwd=tiny.parent)
    assert one.returncode == 0, one.stderr
    two = run_cli(["run", str(tiny), "output=two.h5", "debug.fake_oom_above=8", "debug.fake_oom_rank=0",
                   "parallel.ranks_per_group=2", *common], ranks=2, cwd=tiny.parent)
    assert two.returncode == 0, two.stderr
    for proc in (one, two):
        seen = re.findall(r"\[rank (\d+)/\d+ [^\]]*\] out of memory in (\w+) at (\d+) rows", proc.stderr)
        # rank 0 only; remembered: each kind backs off once in round 0 and never again in round 1
        assert sorted(seen) == [("0", kind, "16") for kind in ("eval", "score", "train")], seen
    for name in ("one.h5", "two.h5"):
        worst = close_enough(tiny.parent / "ref.h5", tiny.parent / name)
        print(f"{name}: largest stored float difference {worst:.2e}")


def test_a_sharded_models_backoff_raises_instead_of_retrying():
    """A sharded model's passes are collectives: one rank retrying alone would leave its group out of step."""
    calls: list[int] = []

    def attempt(size: int) -> int:
        calls.append(size)
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        Backoff(cuts=False).retry("train", 8, attempt)
    assert calls == [8]
    with pytest.raises(torch.cuda.OutOfMemoryError):
        Backoff().retry("train", 8, attempt)
    assert calls == [8, 8, 4, 2, 1]
