"""RandomToken: fresh random attack tokens every iteration; the first success is kept.

One candidate per iteration, drawn from a stream keyed by (seed, round, attack, example,
iteration) and not by model, so every model size scores exactly the same candidates. Iterations
are scored `score_chunk` at a time; an example stops after the chunk in which it first succeeds,
and its recorded success is the first iteration that flipped, so the ASR curve never falls.
"""

from __future__ import annotations

import numpy as np

from hpcrobust.attacks.base import Attack, ExampleState
from hpcrobust.attacks.engine import Scores, ScoringEngine
from hpcrobust.attacks.vocab import allowed_tokens
from hpcrobust.config import AttackConfig
from hpcrobust.rng import stream


class RandomToken(Attack):
    def __init__(self, cfg: AttackConfig, seed: int, key: tuple, tokenizer, chunk: int) -> None:
        super().__init__(cfg, seed, key)
        self.allowed = allowed_tokens(tokenizer, ascii_only=False)
        self.chunk = chunk

    @property
    def n_steps(self) -> int:
        return -(-self.n_iterations // self.chunk)

    def step_iterations(self, step: int) -> range:
        return range(step * self.chunk + 1, min(self.n_iterations, (step + 1) * self.chunk) + 1)

    def candidates(self, example: int, iterations: range) -> np.ndarray:
        """Rows for the given iterations; the same rows for any model sharing the vocabulary."""
        rows = [stream(self.seed, *self.key, "rt", example, it).integers(0, len(self.allowed), self.cfg.n_attack_tokens)
                for it in iterations]
        return self.allowed[np.stack(rows)]

    def start(self, st: ExampleState) -> None:
        st.tokens = np.zeros(0, dtype=np.int64)

    def propose(self, st: ExampleState, step: int, engine: ScoringEngine) -> np.ndarray:
        return self.candidates(st.example, self.step_iterations(step))

    def update(self, st: ExampleState, step: int, cands: np.ndarray, sc: Scores) -> None:
        its = self.step_iterations(step)
        hits = np.flatnonzero(sc.flipped)
        pick = int(hits[0]) if len(hits) else int(np.argmin(sc.losses))
        if len(hits) or sc.losses[pick] < st.best_loss:
            st.best_loss = float(sc.losses[pick])
            st.tokens = cands[pick].copy()
        if len(hits):
            st.done, st.first_success = True, its[pick]
