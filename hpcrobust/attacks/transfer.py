"""Cross-size transfer: every run's final attack strings, evaluated on every other run's model.

At the end of a round the final strings of each evaluation attack are gathered from every run; each
group leader scores them on its own models (same examples, same placement), and the counts are
gathered into a source x target ASR matrix. An entry counts the examples the source attacked and the
target classified correctly without the attack; it is the share of those the source's string flips.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hpcrobust.attacks.config import AttackConfig
from hpcrobust.attacks.engine import ScoringEngine
from hpcrobust.attacks.evaluate import EvalSet
from hpcrobust.models.classifier import Classifier


@dataclass
class Source:
    key: str
    tokens: list[np.ndarray]  # final attack tokens per example
    attacked: np.ndarray  # [n_examples] bool: the source classified the example correctly, so attacked it
    # (an example it already got wrong holds only the attack's initial string, e.g. GCG's filler)


@dataclass
class Target:
    index: int
    key: str
    clf: Classifier
    correct: np.ndarray  # [n_val] clean prediction correct


def transfer_counts(a: AttackConfig, sources: list[Source], targets: list[Target], data: EvalSet
                    ) -> dict[tuple[str, str], tuple[int, int]]:
    """{(source, target): (flipped, evaluated)} for the targets this rank holds."""
    out = {}
    for t in targets:
        engine = ScoringEngine(t.clf, data.score_chunk)
        flips = {s.key: 0 for s in sources}
        counted = {s.key: 0 for s in sources}
        n_ex = min(len(s.tokens) for s in sources)
        for k in range(n_ex):
            if not t.correct[k]:
                continue
            enc = data.encode(a, t.clf.tokenizer, k)
            rows = [(s.key, s.tokens[k]) for s in sources if s.attacked[k] and len(s.tokens[k])]
            for length in sorted({len(r) for _, r in rows}):  # one batch per attack length (BEAST varies)
                group = [(key, r) for key, r in rows if len(r) == length]
                sc = engine.score_all(k, enc, np.stack([r for _, r in group]))
                for (key, _), flipped in zip(group, sc.flipped, strict=True):
                    flips[key] += int(flipped)
                    counted[key] += 1
        for s in sources:
            out[(s.key, t.key)] = (flips[s.key], counted[s.key])
    return out


def transfer_matrix(counts: dict[tuple[str, str], tuple[int, int]], order: list[str]) -> np.ndarray:
    """The [source, target] ASR matrix over the runs in `order` (NaN where nothing counted)."""
    mat = np.full((len(order), len(order)), np.nan)
    for i, s in enumerate(order):
        for j, t in enumerate(order):
            flipped, n = counts.get((s, t), (0, 0))
            if n:
                mat[i, j] = flipped / n
    return mat
