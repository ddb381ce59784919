"""Build attacks from the config, and check attack configs before any work starts."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from hpcrobust.attacks.base import Attack, AttackResult, run_attack
from hpcrobust.attacks.beast import Beast, Sampler
from hpcrobust.attacks.engine import ScoringEngine
from hpcrobust.attacks.gcg import GCG, initial_tokens
from hpcrobust.attacks.random_token import RandomToken
from hpcrobust.config import AttackConfig, FamilyConfig, ModelConfig, SweepConfig
from hpcrobust.errors import UserError
from hpcrobust.models.classifier import Classifier
from hpcrobust.models.flops import FlopMeter
from hpcrobust.parallel.comm import Comm
from hpcrobust.tasks.placement import encode


def sampler_model(a: AttackConfig) -> ModelConfig:
    from hpcrobust.preflight import smallest_builtin

    return ModelConfig(name_or_path=a.sampler or f"builtin:{smallest_builtin()}")


def all_attacks(cfg: SweepConfig) -> list[tuple[str, int, AttackConfig]]:
    return [(g, i, a) for g in ("attacks", "train_attacks") for i, a in enumerate(getattr(cfg, g))]


def check_attacks(cfg: SweepConfig, vocab_sizes: list[int]) -> None:
    """Checks that need only the config and the vocabulary sizes (before the family is built)."""
    smallest = min(vocab_sizes) if vocab_sizes else 0
    for group, i, a in all_attacks(cfg):
        key = f"{group}.{i} ({a.name})"
        if a.type == "gcg" and a.topk > smallest:
            raise UserError(f"{key}: topk {a.topk} is larger than the vocabulary ({smallest} tokens)")
        if a.type == "beast" and a.n_iterations != a.n_attack_tokens:
            raise UserError(f"{key}: BEAST grows the attack one token per iteration, so n_iterations"
                            f" ({a.n_iterations}) must equal n_attack_tokens ({a.n_attack_tokens})")
        if a.type == "beast":
            sampler_builtin = sampler_model(a).name_or_path.startswith("builtin:")
            for m in cfg.models:
                if m.name_or_path.startswith("builtin:") != sampler_builtin:
                    raise UserError(f"{key}: the sampler '{sampler_model(a).name_or_path}' has a different tokenizer"
                                    f" from the victim '{m.name_or_path}'; BEAST needs one shared vocabulary")
        if a.ensemble and a.type != "gcg":
            raise UserError(f"{key}: ensemble is a GCG option")


@lru_cache(maxsize=16)
def _vocab(path: str, trust_remote_code: bool) -> tuple:
    from hpcrobust.models.loading import load_tokenizer

    tok = load_tokenizer(path, ModelConfig(name_or_path=path, trust_remote_code=trust_remote_code))
    return tuple(sorted(tok.get_vocab().items())), tok


def check_attacks_with_tokenizers(cfg: SweepConfig) -> None:
    """Checks that need the tokenizers (run after the built-in family exists, before any run starts)."""
    from hpcrobust.models.loading import resolve

    victims = [(m, resolve(m, cfg.family).path) for m in cfg.models]
    for group, i, a in all_attacks(cfg):
        key = f"{group}.{i} ({a.name})"
        if a.type == "gcg":
            for m, path in victims:
                tok = _vocab(path, m.trust_remote_code)[1]
                n = len(initial_tokens(a, tok))
                if n != a.n_attack_tokens:
                    raise UserError(f"{key}: init_string gives {n} tokens with {m.name_or_path}'s tokenizer,"
                                    f" n_attack_tokens is {a.n_attack_tokens}")
        if a.type == "beast":
            sm = sampler_model(a)
            spath = resolve(sm, cfg.family).path
            try:
                svocab = _vocab(spath, False)[0]
            except (OSError, ValueError):
                raise UserError(f"{key}: sampler '{sm.name_or_path}' has no loadable tokenizer") from None
            for m, path in victims:
                if _vocab(path, m.trust_remote_code)[0] != svocab:
                    raise UserError(f"{key}: the sampler '{sm.name_or_path}' has a different tokenizer from"
                                    f" the victim '{m.name_or_path}'; BEAST needs one shared vocabulary")


def make_attack(a: AttackConfig, seed: int, run_key: str, rnd: int, clf: Classifier, chunk: int,
                fam: FamilyConfig, purpose: str = "eval", rt_table: np.ndarray | None = None) -> Attack:
    """`purpose` keeps the streams of training attacks apart from those of evaluation attacks."""
    if a.type == "random_token":
        # Not keyed by the run: every model size scores the same candidates (broadcast as `rt_table`).
        return RandomToken(a, seed, (purpose, rnd, a.name), clf.tokenizer, chunk, rt_table)
    key = (purpose, run_key, rnd, a.name)
    if a.type == "gcg":
        return GCG(a, seed, key, clf.tokenizer)
    from hpcrobust.models.loading import resolve

    path = resolve(sampler_model(a), fam).path

    def factory(meter: FlopMeter) -> Sampler:
        return Sampler(path, clf.device, clf.dtype, meter)

    return Beast(a, seed, key, clf.tokenizer, factory)


def attack_examples(a: AttackConfig, clf: Classifier, examples: list, max_content_tokens: int,
                    indices: list[int]) -> list[tuple[int, object]]:
    return [(i, encode(clf.tokenizer, examples[i], a.placement, a.infix_fraction, max_content_tokens))
            for i in indices]


def evaluate_attack(a: AttackConfig, clf: Classifier, group: Comm, seed: int, run_key: str, rnd: int,
                    val: list, clean_pred: np.ndarray, chunk: int, fam: FamilyConfig,
                    max_content_tokens: int, rt_table: np.ndarray | None = None) -> AttackResult:
    """One evaluation attack on the first `n_examples` validation examples."""
    n = min(a.n_examples, len(val))
    idx = list(range(n))
    labels = np.array([val[i].label for i in idx])
    correct = clean_pred[:n] == labels
    attack = make_attack(a, seed, run_key, rnd, clf, chunk, fam, rt_table=rt_table)
    engine = ScoringEngine(clf, chunk)
    return run_attack(attack, engine, group, attack_examples(a, clf, val, max_content_tokens, idx), correct)
