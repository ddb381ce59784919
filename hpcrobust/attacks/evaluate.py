"""One evaluation attack on a model: the first `n_examples` validation examples, in the attack's placement."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hpcrobust.attacks.base import AttackEnv, AttackResult, run_attack
from hpcrobust.attacks.config import AttackConfig
from hpcrobust.attacks.engine import ScoringEngine
from hpcrobust.attacks.state import AttackSaver
from hpcrobust.parallel.comm import Comm
from hpcrobust.tasks.base import Example
from hpcrobust.tasks.placement import encode


@dataclass(frozen=True)
class EvalSet:
    """The validation examples that evaluation attacks (and transfer, ensemble) run on, and how they are
    scored."""

    examples: list[Example]
    score_chunk: int

    def encode(self, a: AttackConfig, tokenizer, k: int):
        return encode(tokenizer, self.examples[k], a.placement, a.infix_fraction)


def encode_examples(a: AttackConfig, tokenizer, examples: list[Example], indices: list[int]
                    ) -> list[tuple[int, object]]:
    """(index, encoding) of each attacked example, with the attack's placement."""
    return [(i, encode(tokenizer, examples[i], a.placement, a.infix_fraction)) for i in indices]


def evaluate(a: AttackConfig, env: AttackEnv, group: Comm, data: EvalSet, clean_pred: np.ndarray,
             saver: AttackSaver | None = None) -> AttackResult:
    """Collective over `group`; only examples the model classified correctly are attacked. `saver` keeps the
    attack's state as it goes (attacks/state.py)."""
    val = data.examples
    n = min(a.n_examples, len(val))
    correct = clean_pred[:n] == np.array([val[i].label for i in range(n)])
    attack = a.plugin.build(a, env)
    engine = ScoringEngine(env.clf, data.score_chunk)
    encs = encode_examples(a, env.clf.tokenizer, val, list(range(n)))
    return run_attack(attack, engine, group, encs, correct, saver)
