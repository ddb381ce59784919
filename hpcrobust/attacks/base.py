"""The attack driver: every attack is propose -> score -> update, in lockstep over examples.

Each example has a fixed lead rank (example index mod group size) that makes its proposals (GCG
gradients, BEAST sampling, RandomToken draws). Proposals are shared with the whole group. While at
least as many examples are running as there are ranks, each example's candidate chunks are scored
by its lead; once fewer remain, the chunks are dealt round-robin over all ranks. Every rank then
applies the same deterministic update to every example, so the ranks never diverge and the stored
numbers do not depend on how many there are.
"""

from __future__ import annotations

import hashlib
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from hpcrobust.attacks.engine import Scores, ScoringEngine
from hpcrobust.config import AttackConfig
from hpcrobust.models.flops import FlopCount
from hpcrobust.parallel.collectives import gather_losses, ranks_agree, share_indexed
from hpcrobust.parallel.comm import Comm
from hpcrobust.tasks.placement import Encoded


@dataclass
class ExampleState:
    """What every rank knows about one attacked example."""

    i: int  # position among the attacked examples
    example: int  # index in the validation split: keys the example's random streams
    enc: Encoded
    tokens: np.ndarray  # current (or final) attack tokens
    done: bool = False
    first_success: int = -1
    best_loss: float = float("inf")
    extra: dict = field(default_factory=dict)


@dataclass
class AttackResult:
    name: str
    asr: np.ndarray
    correct_before: np.ndarray
    first_success: np.ndarray
    tokens: list[np.ndarray]
    texts: list[str]
    example_index: np.ndarray
    flops_nominal: np.ndarray
    flops_actual: np.ndarray
    wall_time: float
    final_loss: np.ndarray
    attrs: dict = field(default_factory=dict)


class Attack(ABC):
    """One algorithm. `start`/`update` run on every rank; `propose` only on an example's lead."""

    def __init__(self, cfg: AttackConfig, seed: int, key: tuple) -> None:
        self.cfg = cfg
        self.seed = seed
        self.key = key  # (run, round, attack name): with the example and iteration, keys every stream

    @property
    def n_iterations(self) -> int:
        return self.cfg.n_iterations

    @property
    def n_steps(self) -> int:
        return self.n_iterations

    @property
    def meters(self) -> tuple:
        """FLOP meters of models the attack runs besides the victim (BEAST's sampler)."""
        return ()

    def step_iterations(self, step: int) -> range:
        """Iterations (1-based; 0 is the setup) that a lockstep step covers."""
        return range(step + 1, step + 2)

    @abstractmethod
    def start(self, st: ExampleState) -> None: ...

    def setup(self, st: ExampleState, engine: ScoringEngine) -> np.ndarray | None:
        """Lead only, before step 0: candidates to score as iteration 0 (e.g. GCG's initial string)."""
        return None

    def update_setup(self, st: ExampleState, cands: np.ndarray, sc: Scores) -> None:
        best = int(np.argmin(sc.losses))
        st.best_loss = float(sc.losses[best])
        if sc.flipped[best]:
            st.first_success = 0
            st.done = self.cfg.early_stop

    @abstractmethod
    def propose(self, st: ExampleState, step: int, engine: ScoringEngine) -> np.ndarray: ...

    @abstractmethod
    def update(self, st: ExampleState, step: int, cands: np.ndarray, sc: Scores) -> None: ...


def _digest(states: list[ExampleState]) -> str:
    h = hashlib.sha256()
    for st in states:
        h.update(np.asarray(st.tokens, dtype=np.int64).tobytes())
        h.update(np.array([st.first_success, st.best_loss, st.done], dtype=np.float64).tobytes())
    return h.hexdigest()


def _concat(parts: list[Scores]) -> Scores:
    return Scores(np.concatenate([p.losses for p in parts]), np.concatenate([p.flipped for p in parts]))


def _score_round(engine: ScoringEngine, group: Comm, states: list[ExampleState],
                 cands: dict[int, np.ndarray]) -> dict[int, Scores]:
    running = [st for st in states if st.i in cands]
    work = [(st.i, j) for st in running for j in range(engine.n_chunks(len(cands[st.i])))]
    g, me = group.size, group.rank
    if len(running) >= g:
        mine = [(i, j) for i, j in work if i % g == me]
    else:  # fewer examples than ranks: split the candidate batches instead
        mine = [w for k, w in enumerate(work) if k % g == me]
    by_i = {st.i: st for st in running}
    local = {w: engine.score_chunk(w[0], by_i[w[0]].enc, engine.chunk_rows(cands[w[0]], w[1])) for w in mine}
    allsc = gather_losses(group, local)
    return {st.i: _concat([allsc[(st.i, j)] for j in range(engine.n_chunks(len(cands[st.i])))])
            for st in running}


def run_attack(attack: Attack, engine: ScoringEngine, group: Comm, examples: list[tuple[int, Encoded]],
               correct_before: np.ndarray) -> AttackResult:
    """Attack `examples` (validation index, encoding) with the whole group; every rank returns the result."""
    t0 = time.time()
    n_it = attack.n_iterations
    meters = (engine.clf.meter, *attack.meters)
    buckets = [FlopCount() for _ in range(n_it + 1)]
    states = [ExampleState(k, ex, enc, np.zeros(0, dtype=np.int64)) for k, (ex, enc) in enumerate(examples)]
    g, me = group.size, group.rank

    def snap() -> list[FlopCount]:
        return [m.total.snapshot() for m in meters]

    def charge(start: list[FlopCount], its: range) -> None:
        spent = FlopCount()
        for m, s in zip(meters, start, strict=True):
            spent.add(m.total.since(s))
        n = len(its)
        for k, it in enumerate(its):  # spread evenly, remainder to the first iterations (exact integers)
            buckets[it].add(FlopCount(spent.nominal // n + (k < spent.nominal % n),
                                      spent.actual // n + (k < spent.actual % n)))

    for st in states:
        attack.start(st)
        if not correct_before[st.i]:
            st.done = True
    # iteration 0: the prefix caches and whatever the attack evaluates before its first step
    start = snap()
    setup: dict[int, np.ndarray] = {}
    for st in states:
        if not st.done and st.i % g == me:
            engine.prefix(st.i, st.enc, count=True)
            c = attack.setup(st, engine)
            if c is not None:
                setup[st.i] = c
    setup = share_indexed(group, setup)
    if setup:
        for i, sc in _score_round(engine, group, states, setup).items():
            attack.update_setup(states[i], setup[i], sc)
    charge(start, range(0, 1))

    for step in range(attack.n_steps):
        running = [st for st in states if not st.done]
        if not running:
            break
        start = snap()
        cands = {st.i: attack.propose(st, step, engine) for st in running if st.i % g == me}
        cands = share_indexed(group, cands)
        scores = _score_round(engine, group, states, cands)
        for st in running:
            attack.update(st, step, cands[st.i], scores[st.i])
        charge(start, attack.step_iterations(step))

    if g > 1 and not ranks_agree(group, _digest(states)):
        raise RuntimeError(f"ranks of a group diverged in attack {attack.cfg.name}")
    totals = [FlopCount() for _ in range(n_it + 1)]
    for part in group.allgather(buckets):
        for t, c in zip(totals, part, strict=True):
            t.add(c)
    first = np.array([st.first_success for st in states], dtype=np.int64)
    n_ok = int(correct_before.sum())
    asr = np.array([((first >= 0) & (first <= t)).sum() / n_ok if n_ok else np.nan for t in range(n_it + 1)])
    tok = engine.clf.tokenizer
    tokens = [st.tokens for st in states]
    return AttackResult(
        name=attack.cfg.name, asr=asr, correct_before=correct_before.astype(bool), first_success=first,
        tokens=tokens, texts=[tok.decode(t.tolist()) if len(t) else "" for t in tokens],
        example_index=np.array([i for i, _ in examples], dtype=np.int64),
        flops_nominal=np.array([t.nominal for t in totals], dtype=np.float64),
        flops_actual=np.array([t.actual for t in totals], dtype=np.float64),
        wall_time=group.allreduce_max(time.time() - t0),
        final_loss=np.array([st.best_loss for st in states], dtype=np.float64))
