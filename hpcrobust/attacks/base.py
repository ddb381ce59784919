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
import json
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np

from hpcrobust.attacks.config import AttackConfig, AttackParams
from hpcrobust.attacks.engine import Scores, ScoringEngine, gather_scores_on_device
from hpcrobust.attacks.state import AttackSaver, AttackState
from hpcrobust.errors import UserError
from hpcrobust.log import log
from hpcrobust.models.classifier import Classifier
from hpcrobust.models.config import FamilyConfig, ModelConfig
from hpcrobust.models.flops import FlopCount
from hpcrobust.parallel.collectives import ranks_agree, share_indexed
from hpcrobust.parallel.comm import Comm
from hpcrobust.parallel.sharding import sync
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
    now_flipped: bool = False  # the current candidate is misclassified (the reference's per-iteration success)
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
    asr_current: np.ndarray  # [n_iterations+1] the reference's ASR (see current_asr)
    early_stop: bool = False
    attrs: dict = field(default_factory=dict)


def asr_curve(first_success: np.ndarray, correct_before: np.ndarray, n_iterations: int) -> np.ndarray:
    """[n_iterations+1] ASR after each iteration: the share of the examples classified correctly before the
    attack whose label had flipped at or before that iteration (NaN when none was correct)."""
    n_ok = int(np.asarray(correct_before).sum())
    first = np.asarray(first_success)
    return np.array([((first >= 0) & (first <= t)).sum() / n_ok if n_ok else np.nan
                     for t in range(n_iterations + 1)])


def current_asr(hits: np.ndarray, correct_before: np.ndarray) -> np.ndarray:
    """[n_iterations+1] the reference's ASR: at iteration t, the share of the examples classified correctly
    before the attack whose current candidate is misclassified. `hits` is [n_examples, n_iterations+1];
    iteration 0 is 0 by definition, as in the reference (no attack has run yet)."""
    ok = np.asarray(correct_before, dtype=bool)
    if not ok.any():
        return np.full(hits.shape[1], np.nan)
    out = hits[ok].mean(axis=0)
    out[0] = 0.0
    return out


@dataclass
class AttackEnv:
    """What an attack is built with: the model it attacks, and what keys its random streams."""

    seed: int
    purpose: str  # "eval" or "train": keeps the streams of the two kinds of attack apart
    run_key: str
    rnd: int
    clf: Classifier
    score_chunk: int
    family: FamilyConfig
    shared: np.ndarray | None = None  # candidates drawn once for every size of a seed (RandomToken)

    def stream_key(self, a: AttackConfig, per_run: bool = True) -> tuple:
        """With the example and iteration, keys every stream; `per_run=False` gives every size the same."""
        return (self.purpose, self.run_key, self.rnd, a.name) if per_run else (self.purpose, self.rnd, a.name)


@dataclass
class CheckEnv:
    """What an attack's checks may look at, before any work starts."""

    victims: list[ModelConfig]
    victim_paths: list[str]  # resolved model folders (or hub ids), in the order of `victims`
    vocab_sizes: list[int]
    family: FamilyConfig


class Attack(ABC):
    """One algorithm, registered with `@register_attack(name)`.

    `start`/`update` run on every rank; `propose` only on an example's lead. The class methods are the
    plug-in's face to the sweep: how to build it for one run and round, and what to check first.
    """

    type_name: ClassVar[str] = ""  # set by @register_attack
    Params: ClassVar[type[AttackParams]] = AttackParams  # this attack's own config keys
    length_is_iterations: ClassVar[bool] = False  # grows the attack one token per iteration (BEAST)

    def __init__(self, cfg: AttackConfig, seed: int, key: tuple) -> None:
        self.cfg = cfg
        self.p = cfg.params
        self.seed = seed
        self.key = key  # (purpose, [run,] round, attack name): with the example and iteration, keys every stream

    # ------------------------------------------------------------ plug-in interface
    @classmethod
    @abstractmethod
    def build(cls, a: AttackConfig, env: AttackEnv) -> Attack:
        """The attack for one run's round."""

    @classmethod
    def check(cls, a: AttackConfig, key: str, env: CheckEnv) -> None:
        """Config-level checks (before the built-in family exists); raise UserError with `key`."""
        if cls.length_is_iterations and a.n_iterations != a.n_attack_tokens:
            raise UserError(f"{key}: {cls.type_name} grows the attack one token per iteration, so n_iterations"
                            f" ({a.n_iterations}) must equal n_attack_tokens ({a.n_attack_tokens})")

    @classmethod
    def check_tokenizers(cls, a: AttackConfig, key: str, env: CheckEnv) -> None:
        """Checks that need the victims' tokenizers (after the built-in family is built); none by default."""
        return None

    @classmethod
    def extra_models(cls, a: AttackConfig, family: FamilyConfig) -> list[ModelConfig]:
        """Models the attack loads besides its victim (they are built or checked with the victims)."""
        return []

    @classmethod
    def for_training(cls, a: AttackConfig, n_iterations: int, n_examples: int) -> AttackConfig:
        """The training attack of one round, on the schedule of advtrain.*."""
        extra = {"n_attack_tokens": n_iterations} if cls.length_is_iterations else {}
        return replace(a, n_iterations=n_iterations, n_examples=n_examples, **extra)

    @property
    def stops_early(self) -> bool:
        return bool(getattr(self.p, "early_stop", False))

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

    def current_flips(self, st: ExampleState, its: range) -> list[bool]:
        """Whether the candidate current at each iteration of `its` is misclassified (the reference's ASR). By
        default an example's first success stays its result (RandomToken, and a plug-in that says nothing); an
        attack that can move away from a success (GCG) returns `st.now_flipped` instead."""
        return [0 <= st.first_success <= it for it in its]

    def update_setup(self, st: ExampleState, cands: np.ndarray, sc: Scores) -> None:
        best = int(np.argmin(sc.losses))
        st.best_loss = float(sc.losses[best])
        st.now_flipped = bool(sc.flipped[best])
        if sc.flipped[best]:
            st.first_success = 0
            st.done = self.stops_early

    @abstractmethod
    def propose(self, st: ExampleState, step: int, engine: ScoringEngine) -> np.ndarray: ...

    @abstractmethod
    def update(self, st: ExampleState, step: int, cands: np.ndarray, sc: Scores) -> None: ...

    def state_arrays(self, st: ExampleState) -> dict[str, np.ndarray]:
        """What the attack keeps about an example besides tokens, flags and losses (`st.extra`), as arrays, so that
        a killed run goes on inside the attack (attacks/state.py); nothing by default."""
        return {}

    def load_state(self, st: ExampleState, arrays: dict[str, np.ndarray]) -> None:
        """Put back, after `start`, what `state_arrays` gave; what is not state (caches) is rebuilt uncounted."""
        return None


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
        per_rank = [[(i, j) for i, j in work if i % g == r] for r in range(g)]
    else:  # fewer examples than ranks: split the candidate batches instead
        per_rank = [[w for k, w in enumerate(work) if k % g == r] for r in range(g)]
    by_i = {st.i: st for st in running}
    local = {w: engine.score_chunk(w[0], by_i[w[0]].enc, engine.chunk_rows(cands[w[0]], w[1]))
             for w in per_rank[me]}
    sync(engine.clf)  # a sharded group ends its scoring passes together
    if g > 1:  # the scores travel as device tensors (NCCL on GPUs), not as host pickles
        sizes = [[len(engine.chunk_rows(cands[i], j)) for i, j in mine] for mine in per_rank]
        allsc = gather_scores_on_device(group.tensors, per_rank, sizes, local)
    else:
        allsc = local
    return {st.i: _concat([allsc[(st.i, j)] for j in range(engine.n_chunks(len(cands[st.i])))])
            for st in running}


def state_check(attack: Attack, engine: ScoringEngine, examples: list[tuple[int, Encoded]],
                correct_before: np.ndarray) -> str:
    """What a kept attack state must have been made with to be this attack's (any rank count)."""
    facts = {"type": attack.type_name, "cfg": attack.cfg.to_data(), "seed": attack.seed,
             "key": [str(k) for k in attack.key], "n_steps": attack.n_steps, "n_iterations": attack.n_iterations,
             "chunk": engine.chunk, "examples": [int(i) for i, _ in examples],
             "correct": np.asarray(correct_before, dtype=bool).tolist()}
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()


def _capture(attack: Attack, states: list[ExampleState], step: int, hits: np.ndarray, reached: np.ndarray,
             flops: list[FlopCount], wall_s: float) -> AttackState:
    return AttackState(
        step=step, tokens=[np.asarray(st.tokens, dtype=np.int64) for st in states],
        done=np.array([st.done for st in states], dtype=bool),
        first_success=np.array([st.first_success for st in states], dtype=np.int64),
        best_loss=np.array([st.best_loss for st in states], dtype=np.float64),
        now_flipped=np.array([st.now_flipped for st in states], dtype=bool),
        extra=[attack.state_arrays(st) for st in states], hits=hits.copy(), reached=reached.copy(),
        flops=flops, wall_s=wall_s)


def _restore(attack: Attack, states: list[ExampleState], kept: AttackState) -> None:
    for st in states:
        st.tokens = np.asarray(kept.tokens[st.i], dtype=np.int64).copy()
        st.done, st.now_flipped = bool(kept.done[st.i]), bool(kept.now_flipped[st.i])
        st.first_success, st.best_loss = int(kept.first_success[st.i]), float(kept.best_loss[st.i])
        attack.load_state(st, kept.extra[st.i])


def run_attack(attack: Attack, engine: ScoringEngine, group: Comm, examples: list[tuple[int, Encoded]],
               correct_before: np.ndarray, saver: AttackSaver | None = None) -> AttackResult:
    """Attack `examples` (validation index, encoding) with the whole group; every rank returns the result.

    `saver` keeps the attack's state at step boundaries and goes on from one kept by an earlier attempt
    (attacks/state.py)."""
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

    hits = np.zeros((len(states), n_it + 1), dtype=bool)  # current candidate misclassified, per iteration
    reached = np.zeros(len(states), dtype=np.int64)  # last iteration recorded in `hits`
    check = state_check(attack, engine, examples, correct_before) if saver is not None else ""

    def keep(step: int) -> None:
        """Collective: the group's state after `step` steps, with the FLOPs of every rank summed."""
        summed = [FlopCount() for _ in range(n_it + 1)]
        for part in group.allgather(buckets):
            for t, c in zip(summed, part, strict=True):
                t.add(c)
        wall = group.allreduce_max(time.time() - t0)
        saver.save(check, _capture(attack, states, step, hits, reached, summed, wall))

    for st in states:
        attack.start(st)
        if not correct_before[st.i]:
            st.done = True
    kept = saver.load(check) if saver is not None else None
    if kept is not None:  # go on from the kept step; its FLOPs count once, on the group leader
        _restore(attack, states, kept)
        hits[:], reached[:] = kept.hits, kept.reached
        if me == 0:
            buckets = [c.snapshot() for c in kept.flops]
        t0 -= kept.wall_s
        first_step = saver.resumed_at = kept.step
        log(f"{saver.label} resumed at step {kept.step} of {attack.n_steps} (kept by an earlier attempt)",
            all_ranks=me == 0)
    else:
        # iteration 0: the prefix caches and whatever the attack evaluates before its first step
        start = snap()
        setup: dict[int, np.ndarray] = {}
        for st in states:
            if not st.done and st.i % g == me:
                engine.prefix(st.i, st.enc, count=True)
                c = attack.setup(st, engine)
                if c is not None:
                    setup[st.i] = c
        sync(engine.clf)  # a sharded model: pad until every rank of the group is done (no-op otherwise)
        setup = share_indexed(group, setup)
        if setup:
            for i, sc in _score_round(engine, group, states, setup).items():
                attack.update_setup(states[i], setup[i], sc)
        charge(start, range(0, 1))
        first_step = 0
        if saver is not None and attack.n_steps > 0 and saver.due():
            keep(0)

    for step in range(first_step, attack.n_steps):
        running = [st for st in states if not st.done]
        if not running:
            break
        start = snap()
        cands = {st.i: attack.propose(st, step, engine) for st in running if st.i % g == me}
        sync(engine.clf)
        cands = share_indexed(group, cands)
        scores = _score_round(engine, group, states, cands)
        its = attack.step_iterations(step)
        for st in running:
            attack.update(st, step, cands[st.i], scores[st.i])
            hits[st.i, its.start:its.stop] = attack.current_flips(st, its)
            reached[st.i] = its.stop - 1
        charge(start, its)
        if saver is not None and step + 1 < attack.n_steps and saver.due():
            keep(step + 1)

    if g > 1 and not ranks_agree(group, _digest(states)):
        raise RuntimeError(f"ranks of a group diverged in attack {attack.cfg.name}")
    totals = [FlopCount() for _ in range(n_it + 1)]
    for part in group.allgather(buckets):
        for t, c in zip(totals, part, strict=True):
            t.add(c)
    for st in states:  # an example that stopped keeps its last candidate for the remaining iterations
        hits[st.i, reached[st.i] + 1:] = attack.current_flips(st, range(reached[st.i] + 1, n_it + 1))
    first = np.array([st.first_success for st in states], dtype=np.int64)
    asr = asr_curve(first, correct_before, n_it)
    tok = engine.clf.tokenizer
    tokens = [st.tokens for st in states]
    return AttackResult(
        name=attack.cfg.name, asr=asr, correct_before=correct_before.astype(bool), first_success=first,
        tokens=tokens, texts=[tok.decode(t.tolist()) if len(t) else "" for t in tokens],
        example_index=np.array([i for i, _ in examples], dtype=np.int64),
        flops_nominal=np.array([t.nominal for t in totals], dtype=np.float64),
        flops_actual=np.array([t.actual for t in totals], dtype=np.float64),
        wall_time=group.allreduce_max(time.time() - t0),
        final_loss=np.array([st.best_loss for st in states], dtype=np.float64),
        asr_current=current_asr(hits, correct_before), early_stop=attack.stops_early)
