"""Attacks on one scoring engine: cache equivalence, OOM back-off, and each attack's contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hpcrobust.attacks.base import AttackEnv
from hpcrobust.attacks.engine import ScoringEngine, wrong_label_loss
from hpcrobust.attacks.evaluate import EvalSet, evaluate
from hpcrobust.config import AttackConfig, ModelConfig, TaskConfig, load_config
from hpcrobust.models.backoff import Backoff
from hpcrobust.models.loading import load_classifier
from hpcrobust.models.vocab import allowed_tokens, retokenizes
from hpcrobust.parallel.comm import Comm
from hpcrobust.tasks import load_task
from hpcrobust.tasks.placement import clean_ids, encode
from hpcrobust.training.trainer import TrainSpec, predict, train
from tests.conftest import TINY, run_cli

PLACEMENTS = ["suffix", "prefix", "infix", "overwrite"]
OWN_KEYS = {"gcg": {"search_width": 16, "topk": 16}, "random_token": {},
            "beast": {"beam_width": 3, "branching": 3, "sampler": "builtin:xs"}}


def attack(**keys) -> AttackConfig:
    """An attack entry as a config file writes it (flat keys)."""
    return AttackConfig.from_data(keys, "attack")


def env(cfg, clf, run_key: str = "s__seed0", chunk: int = 16) -> AttackEnv:
    return AttackEnv(0, "eval", run_key, 0, clf, chunk, cfg.family)


def run_eval(a: AttackConfig, cfg, clf, task, pred, chunk: int = 16):
    return evaluate(a, env(cfg, clf, chunk=chunk), Comm(None), EvalSet(task.val, chunk), pred)


@pytest.fixture(scope="module")
def setup(family_cache):
    cfg = load_config(TINY)
    clf = load_classifier(ModelConfig(name_or_path="builtin:s"), cfg.family, torch.device("cpu"), seed=0)
    task = load_task(TaskConfig(name="word_length", n_train=256, n_val=12))
    seqs = [clean_ids(clf.tokenizer, e) for e in task.train]
    train(clf, seqs, [e.label for e in task.train], TrainSpec(1, 2e-3, 32, 32), Comm(None), 0, ("t",))
    pred, _ = predict(clf, [clean_ids(clf.tokenizer, e) for e in task.val], 8, Comm(None))
    return cfg, clf, task, pred


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_cached_scores_equal_full_forward(setup, placement):
    cfg, clf, task, _ = setup
    enc = encode(clf.tokenizer, task.val[0], placement, 0.5)
    cands = np.random.default_rng(0).choice(allowed_tokens(clf.tokenizer, False), size=(9, 5))
    sc = ScoringEngine(clf, chunk=4).score_chunk(0, enc, cands)
    full = torch.tensor([enc.with_attack(c.tolist()) for c in cands])
    with torch.no_grad():
        ref = wrong_label_loss(clf.logits(full), enc.label).double().numpy()
    np.testing.assert_allclose(sc.losses, ref, atol=1e-5)
    uncached = ScoringEngine(clf, chunk=4, use_cache=False).score_chunk(0, enc, cands)
    np.testing.assert_allclose(uncached.losses, ref, atol=1e-5)


def test_out_of_memory_shrinks_and_remembers(setup, monkeypatch):
    cfg, clf, task, _ = setup
    monkeypatch.setattr(clf, "backoff", Backoff())  # what this test learns stays out of the other tests
    enc = encode(clf.tokenizer, task.val[0], "suffix")
    cands = np.random.default_rng(1).choice(allowed_tokens(clf.tokenizer, False), size=(16, 5))
    ref = ScoringEngine(clf, chunk=16).score_chunk(0, enc, cands).losses
    real = clf.logits_cached
    calls = []

    def picky(prefix, tail_ids=None, tail_embeds=None):
        calls.append(tail_ids.shape[0])
        if tail_ids.shape[0] > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
        return real(prefix, tail_ids=tail_ids, tail_embeds=tail_embeds)

    monkeypatch.setattr(clf, "logits_cached", picky)
    eng = ScoringEngine(clf, chunk=16)
    np.testing.assert_allclose(eng.score_chunk(0, enc, cands).losses, ref, atol=1e-5)
    assert eng.fit == 4 and calls[:3] == [16, 8, 4]
    calls.clear()
    eng.score_chunk(1, enc, cands)
    assert max(calls) == 4  # the size that fit is remembered


def test_random_token_shares_candidates_and_never_falls(setup):
    cfg, clf, task, pred = setup
    a = attack(name="rt", type="random_token", n_examples=12, n_iterations=50, n_attack_tokens=4)
    one = a.plugin.build(a, env(cfg, clf, "s__seed0"))
    other = a.plugin.build(a, env(cfg, clf, "xs__seed0"))  # another model size, same round
    assert np.array_equal(one.candidates(3, range(1, 20)), other.candidates(3, range(1, 20)))
    assert not set(one.candidates(3, range(1, 50)).ravel()) & set(clf.tokenizer.all_special_ids)
    res = run_eval(a, cfg, clf, task, pred)
    assert np.all(np.diff(res.asr) >= 0)
    for k, fs in enumerate(res.first_success):
        if fs > 0:  # the kept attack is the first one that flipped
            assert np.array_equal(res.tokens[k], one.candidates(int(res.example_index[k]), [fs])[0])


def test_retokenization_filter(setup):
    _, clf, _, _ = setup
    tok = clf.tokenizer
    good = tok.encode(" hello world again", add_special_tokens=False)
    merged = tok.encode(" he", add_special_tokens=False) + tok.encode("llo", add_special_tokens=False)
    rows = [good, (merged + good)[: len(good)]]
    keep = retokenizes(tok, np.array(rows))
    assert keep[0]
    assert keep[1] == (tok.encode(tok.decode(rows[1]), add_special_tokens=False) == rows[1])


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("kind", ["gcg", "beast", "random_token"])
def test_every_attack_in_every_placement(setup, placement, kind):
    cfg, clf, task, pred = setup
    n = 4
    a = attack(name=kind, type=kind, placement=placement, infix_fraction=0.5, n_examples=6, n_iterations=n,
               n_attack_tokens=n, **OWN_KEYS[kind])
    res = run_eval(a, cfg, clf, task, pred, chunk=8)
    assert res.asr.shape == (n + 1,) and np.all(np.diff(res.asr[~np.isnan(res.asr)]) >= 0)
    assert (res.flops_nominal[1:][res.flops_nominal[1:] > 0] >= res.flops_actual[1:][res.flops_nominal[1:] > 0]).all()
    for k in range(len(res.tokens)):
        if not res.correct_before[k]:
            assert res.first_success[k] == -1
            continue
        assert res.texts[k] == clf.tokenizer.decode(res.tokens[k].tolist())
        if kind == "beast":  # one token per iteration
            expected = res.first_success[k] if res.first_success[k] > 0 else n
            assert len(res.tokens[k]) == expected
        elif kind == "gcg":
            assert len(res.tokens[k]) == n


def test_gcg_lowers_the_loss_and_counts_compute(setup):
    from hpcrobust.attacks.gcg import initial_tokens

    cfg, clf, task, pred = setup
    a = attack(name="gcg", type="gcg", n_examples=12, n_iterations=6, n_attack_tokens=6, search_width=64, topk=64)
    res = run_eval(a, cfg, clf, task, pred)
    init = np.array([initial_tokens(a, clf.tokenizer)])
    eng = ScoringEngine(clf, 16)
    for k in np.flatnonzero(res.correct_before):
        enc = encode(clf.tokenizer, task.val[k], "suffix")
        start = eng.score_chunk(k, enc, init).losses[0]
        assert res.final_loss[k] < start  # every step keeps the best candidate so far
        assert np.isclose(eng.score_chunk(k, enc, res.tokens[k][None]).losses[0], res.final_loss[k], atol=1e-6)
    assert res.flops_nominal[1] > 0 and res.flops_actual[0] > 0  # prefix caches are charged to iteration 0
    hit = res.first_success >= 0
    assert np.isclose(res.asr[-1], hit.sum() / res.correct_before.sum())


def test_bad_attack_configs(tiny, tmp_path):
    from tests.test_hf_models import _save_model

    folder = _save_model("gpt_neox", _tok_other(tmp_path), tmp_path / "other")
    proc = run_cli(["run", str(tiny), f"models=[{folder}]", "attacks=[{name: b, type: beast, n_examples: 4}]"],
                   cwd=tiny.parent)
    assert proc.returncode == 2 and "different tokenizer" in proc.stderr and proc.stderr.count("\n") == 1
    proc = run_cli(["run", str(tiny), "attacks.1.init_string=' a b c d e f g h'"], cwd=tiny.parent)
    assert proc.returncode == 2 and "init_string gives" in proc.stderr
    proc = run_cli(["run", str(tiny), "attacks=[{name: b, type: beast, n_examples: 4, n_iterations: 3}]"],
                   cwd=tiny.parent)
    assert proc.returncode == 2 and "must equal n_attack_tokens" in proc.stderr
    assert not list(tiny.parent.glob("*.h5"))


def _tok_other(tmp_path):
    """A different BPE vocabulary than the built-in family's."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(["completely different corpus " * 50], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    path = tmp_path / "other_tok.json"
    tok.save(str(path))
    return PreTrainedTokenizerFast(tokenizer_file=str(path), eos_token="<|endoftext|>", pad_token="<|endoftext|>")


@pytest.mark.parametrize("extra_rows", [0, 27])
def test_gcg_swaps_never_use_embedding_rows_beyond_the_tokenizer(setup, extra_rows):
    """Real checkpoints pad the embedding past the tokenizer (Pythia: 50,304 rows for 50,277 tokens): the
    gradient is wider than the vocabulary, and the padding rows must never become candidates."""
    from hpcrobust.attacks.gcg import SwapSampler

    _, clf, _, _ = setup
    tok = clf.tokenizer
    a = attack(type="gcg", search_width=64, topk=16)
    sampler = SwapSampler(a.params, tok)
    grad = torch.zeros(6, len(tok) + extra_rows)
    grad[:, len(tok):] = -1e6  # the padding rows look like the best swaps
    tokens = np.array(tok.encode(" hello world again and again", add_special_tokens=False)[:6])
    cands = sampler.candidates(grad, tokens, np.random.default_rng(0))
    assert len(cands) and cands.max() < len(tok)
    assert not np.isin(cands, np.flatnonzero(sampler.blocked)).any()
