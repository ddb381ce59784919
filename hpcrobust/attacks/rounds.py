"""Which rounds an evaluation attack runs in (`attacks.N.rounds`).

Attacking every round of a 60-round run costs more than the training; the paper evaluates about ten
rounds per size, spaced evenly on a log scale. Three forms:

    all          every round 0..last (the default: what a sweep did before this key existed)
    [0, 2, 7]    these rounds; a run whose last round comes earlier skips the later entries
    log:K        K distinct rounds of 0..last, always 0 and last, spaced evenly in log(round + 1):
                 floor((last + 1) ** (i / (K - 1))) - 1 for i = 0..K-1; where flooring makes two equal,
                 the smallest rounds not yet chosen fill up to K; with K > last every round

`last` is each run's own last round (models.N.rounds, advtrain.equal_compute), so sizes with different
round counts get their own K rounds. The log:K rounds are the ones the reference's analysis scripts
evaluate (their integer log spacing with the same fill rule; for last = 60 and K = 10:
0 1 2 3 5 8 14 23 37 60).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from hpcrobust.errors import UserError
from hpcrobust.fields import INT_LIMIT, shown

ALL = "all"
LOG = "log:"
FORMS = "a list of rounds such as [0, 2, 5], 'all' or 'log:K'"


@lru_cache(maxsize=4096)
def log_spaced(k: int, last: int) -> tuple[int, ...]:
    """`k` distinct rounds of 0..last spaced evenly in log(round + 1) (see the module doc)."""
    if k > last:
        return tuple(range(last + 1))
    ratio = np.geomspace(1.0, last + 1.0, k)
    chosen = {int(math.floor(x)) - 1 for x in ratio} | {0, last}
    for r in range(last + 1):  # flooring merged some: the smallest free rounds fill up
        if len(chosen) >= k:
            break
        chosen.add(r)
    return tuple(sorted(chosen))


@dataclass(frozen=True, repr=False)
class EvalRounds:
    """An attack's evaluation rounds as configured: `log_k` > 0 for log:K, else `listed` (None: every round)."""

    listed: tuple[int, ...] | None = None
    log_k: int = 0

    def __repr__(self) -> str:  # how the key table shows the default
        return repr(self.to_data())

    @classmethod
    def from_data(cls, value: object, key: str) -> EvalRounds:
        if isinstance(value, str):
            text = value.strip()
            if text == ALL:
                return cls()
            if text.startswith(LOG):
                digits = text[len(LOG):].strip()
                if not digits.isdigit():
                    raise UserError(f"{key}: {shown(value)}: K of log:K must be a whole number (log:10)")
                k = int(digits)
                if k < 2 or k > INT_LIMIT:
                    raise UserError(f"{key}: {shown(value)}: log:K needs K >= 2 (round 0 and the last round)")
                return cls(log_k=k)
        elif isinstance(value, list):
            if not value:
                raise UserError(f"{key}: an empty list evaluates nothing; remove the attack instead")
            for i, r in enumerate(value):
                if not isinstance(r, int) or isinstance(r, bool):
                    raise UserError(f"{key}.{i}: {shown(r)} is not a round number")
                if r < 0 or r > INT_LIMIT:
                    raise UserError(f"{key}.{i}: {shown(r)}: rounds are numbered from 0")
            if len(set(value)) != len(value):
                dup = next(r for i, r in enumerate(value) if r in value[:i])
                raise UserError(f"{key}: round {dup} repeats")
            return cls(listed=tuple(sorted(value)))
        raise UserError(f"{key}: {shown(value)} is not {FORMS}")

    def to_data(self) -> str | list[int]:
        if self.log_k:
            return f"{LOG}{self.log_k}"
        return ALL if self.listed is None else list(self.listed)

    @property
    def every(self) -> bool:
        return self.listed is None and not self.log_k

    @property
    def highest_listed(self) -> int:
        """The highest round a list names (-1 for the other forms)."""
        return self.listed[-1] if self.listed else -1

    def select(self, last: int) -> list[int]:
        """The rounds of a run whose last round is `last`."""
        if self.log_k:
            return list(log_spaced(self.log_k, last))
        if self.listed is None:
            return list(range(last + 1))
        return [r for r in self.listed if r <= last]

    def evaluates(self, rnd: int, last: int) -> bool:
        if rnd < 0 or rnd > last:
            return False
        if self.listed is not None:
            return rnd in self.listed
        return not self.log_k or rnd in log_spaced(self.log_k, last)
