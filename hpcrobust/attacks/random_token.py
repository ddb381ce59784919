"""RandomToken: fresh random attack tokens every iteration; the first success is kept.

One candidate per iteration, drawn from a stream keyed by (seed, round, attack, example,
iteration) and not by model, so every model size scores exactly the same candidates. Iterations
are scored `score_chunk` at a time. As in the reference, every iteration is scored and counted;
once an example has succeeded its first success stays its result, so the ASR curve never falls.
`early_stop` instead stops an example after the chunk in which it first succeeds.
"""

from __future__ import annotations

import numpy as np

from hpcrobust.attacks.base import Attack, AttackEnv, ExampleState
from hpcrobust.attacks.config import AttackConfig, TokenAttackParams
from hpcrobust.attacks.engine import Scores, ScoringEngine
from hpcrobust.attacks.registry import register_attack
from hpcrobust.models.vocab import allowed_tokens
from hpcrobust.rng import stream


def draw(allowed: np.ndarray, seed: int, key: tuple, n_tokens: int, example: int, iterations) -> np.ndarray:
    rows = [stream(seed, *key, "rt", example, it).integers(0, len(allowed), n_tokens) for it in iterations]
    return allowed[np.stack(rows)]


@register_attack("random_token")
class RandomToken(Attack):
    """One candidate per iteration; only the keys every token attack has."""

    Params = TokenAttackParams

    def __init__(self, cfg: AttackConfig, seed: int, key: tuple, tokenizer, chunk: int,
                 table: np.ndarray | None = None) -> None:
        super().__init__(cfg, seed, key)
        self.allowed = allowed_tokens(tokenizer, ascii_only=self.p.ascii_only)
        self.chunk = chunk
        self.table = table  # [example, iteration, token], broadcast by world rank 0 (see candidate_table)

    @classmethod
    def build(cls, a: AttackConfig, env: AttackEnv) -> RandomToken:
        # Not keyed by the run: every model size scores the same candidates (broadcast as `env.shared`).
        return cls(a, env.seed, env.stream_key(a, per_run=False), env.clf.tokenizer, env.score_chunk, env.shared)

    @property
    def n_steps(self) -> int:
        return -(-self.n_iterations // self.chunk)

    def step_iterations(self, step: int) -> range:
        return range(step * self.chunk + 1, min(self.n_iterations, (step + 1) * self.chunk) + 1)

    def candidates(self, example: int, iterations: range | list[int]) -> np.ndarray:
        """Rows for the given iterations; the same rows for any model sharing the vocabulary."""
        if self.table is not None and example < self.table.shape[0]:
            return self.table[example, np.asarray(iterations) - 1].astype(np.int64)
        return draw(self.allowed, self.seed, self.key, self.cfg.n_attack_tokens, example, iterations)

    def candidate_table(self, n_examples: int) -> np.ndarray:
        return np.stack([draw(self.allowed, self.seed, self.key, self.cfg.n_attack_tokens, e,
                              range(1, self.n_iterations + 1)) for e in range(n_examples)]).astype(np.int32)

    def start(self, st: ExampleState) -> None:
        st.tokens = np.zeros(0, dtype=np.int64)

    def propose(self, st: ExampleState, step: int, engine: ScoringEngine) -> np.ndarray:
        return self.candidates(st.example, self.step_iterations(step))

    def update(self, st: ExampleState, step: int, cands: np.ndarray, sc: Scores) -> None:
        if st.first_success >= 0:
            return  # the first success stays the result
        its = self.step_iterations(step)
        hits = np.flatnonzero(sc.flipped)
        pick = int(hits[0]) if len(hits) else int(np.argmin(sc.losses))
        if len(hits) or sc.losses[pick] < st.best_loss:
            st.best_loss = float(sc.losses[pick])
            st.tokens = cands[pick].copy()
        if len(hits):
            st.first_success, st.now_flipped = its[pick], True
            st.done = self.stops_early
