"""Issue 11: the reference's definitions by default (every iteration runs, the reference ASR, GCG moves to
the best of each batch, special tokens only excluded, BEAST's best seen), and the result bugs it fixed
(pool losses, the transfer matrix's unattacked examples, 6·N·D per family)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hpcrobust.attacks.base import ExampleState
from hpcrobust.attacks.engine import Scores, ScoringEngine
from hpcrobust.attacks.evaluate import EvalSet
from hpcrobust.attacks.transfer import Source, Target, transfer_counts
from hpcrobust.models.vocab import allowed_tokens
from hpcrobust.parallel.comm import Comm
from hpcrobust.tasks.placement import encode
from hpcrobust.training.pool import Pool
from tests.test_attacks import OWN_KEYS, attack, env, run_eval
from tests.test_attacks import setup as setup  # noqa: F401  (the trained tiny classifier fixture)

KINDS = ["gcg", "beast", "random_token"]


def _flips_now(clf, examples, res) -> np.ndarray:
    """Score each example's stored final attack: is it misclassified?"""
    eng = ScoringEngine(clf, 16)
    out = np.zeros(len(res.tokens), dtype=bool)
    for k, toks in enumerate(res.tokens):
        if res.correct_before[k] and len(toks):
            enc = encode(clf.tokenizer, examples[int(res.example_index[k])], "suffix")
            out[k] = bool(eng.score_chunk(k, enc, np.asarray(toks)[None]).flipped[0])
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_by_default_every_iteration_runs_and_early_stop_is_an_option(setup, kind):
    cfg, clf, task, pred = setup
    n = 6
    keys = dict(name=kind, type=kind, n_examples=12, n_iterations=n, n_attack_tokens=n, **OWN_KEYS[kind])
    full = run_eval(attack(**keys), cfg, clf, task, pred)
    fast = run_eval(attack(**keys, early_stop=True), cfg, clf, task, pred)
    assert not full.early_stop and fast.early_stop
    assert (full.flops_nominal[1:] > 0).all()  # every iteration spent compute on every attacked example
    assert np.array_equal(full.first_success, fast.first_success)  # stopping changes the cost, not who flips
    if (full.first_success > 0).any():
        assert fast.flops_nominal.sum() < full.flops_nominal.sum()
    if kind == "random_token":  # one candidate per attacked example per iteration, whatever happened before
        assert len(set(full.flops_nominal[1:].tolist())) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_reference_asr_is_the_current_candidate(setup, kind):
    cfg, clf, task, pred = setup
    n = 6
    a = attack(name=kind, type=kind, n_examples=12, n_iterations=n, n_attack_tokens=n, **OWN_KEYS[kind])
    res = run_eval(a, cfg, clf, task, pred)
    assert res.asr_current[0] == 0
    assert (res.asr_current <= res.asr + 1e-12).all()  # the current candidate flips only after a first flip
    ok = res.correct_before
    # the last iteration's current candidate is the stored attack: scoring it again gives the same share
    assert math.isclose(res.asr_current[-1], _flips_now(clf, task.val, res)[ok].mean())
    if kind != "gcg":  # RandomToken keeps its first success, BEAST its best seen: both curves are cumulative
        assert np.allclose(res.asr_current[1:], res.asr[1:])


def _gcg_state(a, cfg, clf) -> tuple:
    attack_obj = a.plugin.build(a, env(cfg, clf))
    st = ExampleState(0, 0, None, np.zeros(0, dtype=np.int64))
    attack_obj.start(st)
    attack_obj.update_setup(st, st.tokens[None], Scores(np.array([1.0]), np.array([False])))
    return attack_obj, st


def test_gcg_moves_to_the_best_of_each_batch_unless_a_buffer_is_asked_for(setup):
    cfg, clf, _, _ = setup
    width = 4
    worse = np.arange(2 * width, dtype=np.int64).reshape(2, width) + 5
    batch = Scores(np.array([3.0, 2.0]), np.array([False, False]))  # both worse than the start (1.0)
    g, st = _gcg_state(attack(name="g", type="gcg", n_attack_tokens=width, topk=16), cfg, clf)
    g.update(st, 0, worse, batch)
    assert np.array_equal(st.tokens, worse[1]) and st.best_loss == 2.0  # moved, although it is worse
    g, st = _gcg_state(attack(name="g", type="gcg", n_attack_tokens=width, topk=16, buffer_size=1), cfg, clf)
    start = st.tokens.copy()
    g.update(st, 0, worse, batch)
    assert np.array_equal(st.tokens, start) and st.best_loss == 1.0  # the buffer keeps the better start


def test_attack_vocabulary_excludes_only_special_tokens_by_default(setup):
    from hpcrobust.attacks.gcg import SwapSampler

    cfg, clf, _, _ = setup
    tok = clf.tokenizer
    every, ascii_ = allowed_tokens(tok, ascii_only=False), allowed_tokens(tok, ascii_only=True)
    assert len(ascii_) < len(every)  # the byte-level vocabulary has tokens that are not printable ASCII
    assert not set(every.tolist()) & set(tok.all_special_ids)
    for keys, expected in (({}, every), ({"ascii_only": True}, ascii_)):
        a = attack(name="g", type="gcg", n_attack_tokens=4, topk=16, **keys)
        assert np.array_equal(np.flatnonzero(~SwapSampler(a.params, tok).blocked), expected)
        rt = attack(name="r", type="random_token", n_attack_tokens=4, **keys)
        assert np.array_equal(rt.plugin.build(rt, env(cfg, clf)).allowed, expected)
        b = attack(name="b", type="beast", n_iterations=4, n_attack_tokens=4, sampler="builtin:xs", **keys)
        assert np.array_equal(b.plugin.build(b, env(cfg, clf)).allowed, expected)


def test_beast_returns_the_best_candidate_seen(setup):
    cfg, clf, _, _ = setup
    a = attack(name="b", type="beast", n_iterations=3, n_attack_tokens=3, beam_width=2, branching=2,
               sampler="builtin:xs")
    b = a.plugin.build(a, env(cfg, clf))
    st = ExampleState(0, 0, None, np.zeros(0, dtype=np.int64))
    b.start(st)
    first = np.array([[7], [8]], dtype=np.int64)
    b.update(st, 0, first, Scores(np.array([0.9, 0.5]), np.array([False, False])))
    assert np.array_equal(st.tokens, [8])
    second = np.array([[8, 1], [8, 2], [7, 3], [7, 4]], dtype=np.int64)
    b.update(st, 1, second, Scores(np.array([0.8, 0.7, 0.95, 0.99]), np.array([False] * 4)))
    assert np.array_equal(st.tokens, [8]) and st.best_loss == 0.5  # the later beams are all worse
    assert np.array_equal(st.extra["beams"], [[8, 2], [8, 1]])  # the search itself goes on from the beams


def test_pool_entries_carry_the_true_label_loss_of_their_text(setup):
    """Bug 1: new entries got the attack's wrong-label loss, so successful attacks ranked as easy."""
    from hpcrobust.attacks.base import run_attack
    from hpcrobust.training.adversarial import add_attacked
    from hpcrobust.training.trainer import example_losses

    cfg, clf, task, _ = setup
    a = attack(name="g", type="gcg", n_examples=10, n_iterations=4, n_attack_tokens=4, search_width=32, topk=32)
    encs = [(i, encode(clf.tokenizer, task.train[i], "suffix")) for i in range(10)]
    res = run_attack(a.plugin.build(a, env(cfg, clf)), ScoringEngine(clf, 16), Comm(None), encs,
                     np.ones(len(encs), dtype=bool))
    seqs = [enc.with_attack(t.tolist()) for (_, enc), t in zip(encs, res.tokens, strict=True)]
    labels = [enc.label for _, enc in encs]
    pool = Pool()
    pool.add([[1, 2, 3]], [0], 1, [0.25])  # an older entry, refreshed last round
    add_attacked(pool, clf, seqs, labels, 2, 8, Comm(None))
    truth = example_losses(clf, seqs, labels, 8, Comm(None))
    assert np.allclose(pool.losses[1:], truth) and pool.losses[0] == 0.25 and pool.rounds[1:] == [2] * 10
    flipped = _flips_now(clf, task.train, res)
    # an attack that flips the label leaves a high true-label loss: it must rank as hard, not as easy
    if flipped.any() and (~flipped).any():
        assert np.min(truth[flipped]) > np.max(truth[~flipped])


def test_transfer_counts_only_examples_the_source_attacked(setup):
    """Bug 4: an example the source got wrong holds only its initial filler; it must not count."""
    cfg, clf, task, pred = setup
    a = attack(name="g", type="gcg", n_examples=12, n_iterations=3, n_attack_tokens=4, search_width=16, topk=16)
    res = run_eval(a, cfg, clf, task, pred)
    data = EvalSet(task.val, 16)
    target_correct = np.ones(len(task.val), dtype=bool)
    target_correct[1] = False
    attacked = res.correct_before.copy()
    attacked[[0, 2]] = False  # as if the source had got these two wrong
    sources = [Source("src", res.tokens, attacked), Source("all", res.tokens, np.ones(len(res.tokens), bool))]
    counts = transfer_counts(a, sources, [Target(0, "tgt", clf, target_correct)], data)
    eng = ScoringEngine(clf, 16)
    flips = [bool(eng.score_all(k, data.encode(a, clf.tokenizer, k), res.tokens[k][None]).flipped[0])
             for k in range(len(res.tokens))]
    for key, mask in (("src", attacked), ("all", np.ones(len(res.tokens), bool))):
        use = [k for k in range(len(res.tokens)) if mask[k] and target_correct[k]]
        assert counts[(key, "tgt")] == (sum(flips[k] for k in use), len(use))
    assert counts[("src", "tgt")][1] < counts[("all", "tgt")][1]  # the unattacked examples were left out
