"""The sweep's examples: the task's pool fitted to every victim model's context (tasks/fit.py has the rule).

Decided once when the sweep starts, identically on every rank, with each victim model's own tokenizer and
context length, so every run of the sweep (each size, seed and rank count) sees the same examples in the
same order. Models that share a tokenizer are checked once, against the smallest of their contexts.
"""

from __future__ import annotations

import hashlib

from hpcrobust.config import SweepConfig
from hpcrobust.models.loading import load_tokenizer, resolve
from hpcrobust.tasks import Budget, Limit, TaskData
from hpcrobust.tasks.fit import fit_task

NO_LIMIT = 10**9  # a model whose config states no context length
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def context_length(hf_config) -> int:
    """Tokens a model can read, as its config states it (the reference reads max_position_embeddings)."""
    text = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    for key in _CONTEXT_KEYS:
        value = getattr(text, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return NO_LIMIT


def reserve(cfg: SweepConfig) -> int:
    """Tokens kept free in every example: the longest attack of the config, or its random-token defense."""
    lengths = [a.n_attack_tokens for a in (*cfg.attacks, *cfg.train_attacks)]
    lengths += [cfg.finetune.random_token_defense] + [m.random_token_defense for m in cfg.models]
    return max([0, *lengths])


def _tokenizer_key(tok) -> str:
    backend = getattr(tok, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else repr(sorted(tok.get_vocab().items()))
    return type(tok).__name__ + hashlib.sha256(text.encode()).hexdigest()


def limits(cfg: SweepConfig) -> list[Limit]:
    """One Limit per distinct tokenizer among the victim models, at the smallest context of its models."""
    from transformers import AutoConfig

    by_key: dict[str, Limit] = {}
    for m in cfg.models:
        path = resolve(m, cfg.family).path
        hf = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=m.trust_remote_code,
                                        revision=m.revision or None)
        tok = load_tokenizer(path, m)
        lim = Limit(m.name_or_path, tok, context_length(hf))
        key = _tokenizer_key(tok)
        old = by_key.get(key)
        if old is None or lim.context < old.context:
            by_key[key] = lim
    return list(by_key.values())


def sweep_examples(cfg: SweepConfig, pool: TaskData) -> TaskData:
    """The first task.n_train / task.n_val examples of `pool` that fit; a user error if too few remain."""
    return fit_task(pool, cfg.task.n_train, cfg.task.n_val, limits(cfg),
                    Budget(reserve(cfg), cfg.task.max_content_tokens))
