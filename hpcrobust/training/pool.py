"""The growing pool of adversarial examples, and how a round samples from it.

Each pool entry is an attacked token sequence with its label, the round that added it, and its
loss under the current model. A round samples from the pool with weights exp(decay·(r − r_max)),
where r mixes the recency rank and the loss rank. These are true ranks (the position of each
entry in sorted order, ties sharing their mean position), not the argsort indices the reference
implementation used by mistake.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


def true_ranks(values: np.ndarray) -> np.ndarray:
    """0-based ranks in ascending order; tied values share the mean of their positions."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_vals = values[order]
    start = 0
    for end in range(1, len(values) + 1):
        if end == len(values) or sorted_vals[end] != sorted_vals[start]:
            ranks[order[start:end]] = (start + end - 1) / 2.0
            start = end
    return ranks


def sampling_weights(rounds_added: np.ndarray, losses: np.ndarray, decay: float, loss_weight: float) -> np.ndarray:
    """exp(decay·(r − r_max)) with r = loss_weight·loss rank + (1 − loss_weight)·recency rank.

    Newer entries and entries the model still gets wrong (high loss) rank higher and are drawn more.
    """
    r = loss_weight * true_ranks(losses) + (1.0 - loss_weight) * true_ranks(rounds_added)
    return np.exp(decay * (r - r.max())) if len(r) else r


@dataclass
class Pool:
    seqs: list[list[int]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.seqs)

    def add(self, seqs: list[list[int]], labels: list[int], rnd: int, losses: list[float]) -> None:
        self.seqs += seqs
        self.labels += labels
        self.rounds += [rnd] * len(seqs)
        self.losses += list(losses)

    def sample(self, n: int, decay: float, loss_weight: float, rng: np.random.Generator) -> list[int]:
        """Indices of n distinct entries, drawn with the round's weights."""
        n = min(n, len(self))
        if n == len(self):
            return list(range(n))
        w = sampling_weights(np.array(self.rounds), np.array(self.losses), decay, loss_weight)
        return sorted(rng.choice(len(self), size=n, replace=False, p=w / w.sum()).tolist())

    # ---------------------------------------------------------------- persistence (next to the checkpoint)
    def save(self, path: Path) -> None:
        lengths = np.array([len(s) for s in self.seqs], dtype=np.int64)
        flat = np.array([t for s in self.seqs for t in s], dtype=np.int64)
        np.savez(path, flat=flat, lengths=lengths, labels=np.array(self.labels, dtype=np.int64),
                 rounds=np.array(self.rounds, dtype=np.int64), losses=np.array(self.losses, dtype=np.float64))

    @classmethod
    def load(cls, path: Path) -> Pool:
        """A missing file is an error (a checkpoint without its pool is incomplete), never an empty pool."""
        with np.load(path, allow_pickle=False) as z:
            ends = np.cumsum(z["lengths"])
            starts = ends - z["lengths"]
            flat = z["flat"]
            seqs = [flat[a:b].tolist() for a, b in zip(starts, ends, strict=True)]
            return cls(seqs, z["labels"].tolist(), z["rounds"].tolist(), z["losses"].tolist())
