"""Attack config checks against the models they will run on (filled in by the attacks)."""

from __future__ import annotations

from hpcrobust.config import SweepConfig
from hpcrobust.errors import UserError


def check_attacks(cfg: SweepConfig, vocab_sizes: list[int]) -> None:
    smallest = min(vocab_sizes) if vocab_sizes else 0
    for group in ("attacks", "train_attacks"):
        for i, a in enumerate(getattr(cfg, group)):
            key = f"{group}.{i} ({a.name})"
            if a.type == "gcg" and a.topk > smallest:
                raise UserError(f"{key}: topk {a.topk} is larger than the vocabulary ({smallest} tokens)")
