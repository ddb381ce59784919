"""The FLOPs of every phase of every round of every run, before the sweep exists.

The run's own deterministic choices are replayed, not guessed: the epoch order of fine-tuning and of each
adversarial round (`trainer.epoch_order`), which training examples a round attacks (`attacked_examples`), which
clean examples fill its training set, the random-token defense's coin flips, and the training attack's
iteration schedule. Only two things are not known before the run, and the plan states what it assumes:

- which validation examples a model classifies correctly (only those are attacked): `accuracy` of them;
- which pool entries a round samples when the pool holds more than its adversarial share: entries spread evenly
  over the pool's lengths.

What each phase's nominal FLOPs equal in the results file (`recorded`): fine-tuning = round 0's
`finetune_flops`; an evaluation attack = the sum of `attacks/<name>/flops_nominal`; adversarial training =
`defense_flops` (training attack + new entries' losses + training + pool-loss refresh). Clean accuracy and the
transfer matrix are computed but not recorded; they count toward wall time only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from hpcrobust.attacks.beast import sampler_model
from hpcrobust.config import AttackConfig, SweepConfig
from hpcrobust.models.flops import ArchShape, FlopCount
from hpcrobust.planner import flops as F
from hpcrobust.planner.arch import ModelArch, model_arch
from hpcrobust.planner.survival import survival
from hpcrobust.planner.tokens import SplitTokens, TaskTokens
from hpcrobust.rng import stream
from hpcrobust.sweep.plan import RunSpec
from hpcrobust.training.adversarial import attacked_examples
from hpcrobust.training.trainer import epoch_order

TRAIN, FORWARD = "train", "forward"  # utilisation kinds besides "attack:<type>"


@dataclass
class Phase:
    name: str  # "finetune", "attack gcg_suffix", "training attack", ...
    kind: str  # which utilisation applies: "train", "forward" or "attack:<type>"
    flops: FlopCount  # expected (evaluation attacks: at the assumed accuracy)
    recorded: str = ""  # the stored number whose nominal value this is ("" = not stored)
    per_example: list[FlopCount] | None = None  # evaluation attacks: each example's cost if it is attacked
    note: str = ""


@dataclass
class RoundPlan:
    round: int
    phases: list[Phase] = field(default_factory=list)

    def phase(self, name: str) -> Phase:
        return next(p for p in self.phases if p.name == name)

    def nominal(self, recorded: str) -> float:
        return float(sum(p.flops.nominal for p in self.phases if p.recorded == recorded))


@dataclass
class RunPlan:
    run: RunSpec
    model: ModelArch
    tokens: TaskTokens
    rounds: list[RoundPlan] = field(default_factory=list)


def transfer_sources(cfg: SweepConfig, runs: list[RunSpec], n_rounds: list[int]) -> dict[tuple[str, int], int]:
    """{(attack, round): runs that attack evaluates in that round}: the sources of its transfer matrix."""
    return {(a.name, k): sum(1 for r in runs if a.rounds.evaluates(k, n_rounds[r.model_index]))
            for a in cfg.attacks for k in range(max(n_rounds) + 1)}


def grouped(a: ArchShape, rows: np.ndarray, lengths: np.ndarray, shared: np.ndarray, train: bool) -> FlopCount:
    """Batches given as rows of example indices (-1: no example), costed in groups of equal shape."""
    real_rows = rows >= 0
    ln = np.where(real_rows, lengths[np.maximum(rows, 0)], 0.0)
    b = real_rows.sum(axis=1)
    longest = ln.max(axis=1)
    least = np.where(real_rows, ln, np.inf).min(axis=1)
    p = np.minimum(np.where(real_rows, shared[np.maximum(rows, 0)], np.inf).min(axis=1), least - 1)
    keys = np.stack([b, longest, p], axis=1)
    uniq, inv = np.unique(keys, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    reals = np.bincount(inv, weights=ln.sum(axis=1), minlength=len(uniq))
    counts = np.bincount(inv, minlength=len(uniq))
    parts = [F.batches(a, int(k[0]), float(r), float(k[1]), float(k[2]), train, int(n))
             for k, r, n in zip(uniq, reals, counts, strict=True)]
    return F.total(parts)


def training_flops(a: ArchShape, lengths: npt.ArrayLike, shared: npt.ArrayLike, order: list[int],
                   batch_size: int,
                   micro: int) -> FlopCount:
    """The trainer's micro-batches in the order they run: each step of batch_size cut into pieces of `micro`."""
    n = len(order) // batch_size * batch_size
    if n == 0:
        return FlopCount()
    rows = np.asarray(order[:n], dtype=np.int64).reshape(-1, micro)
    return grouped(a, rows, np.asarray(lengths, dtype=float), np.asarray(shared, dtype=float), train=True)


def forward_flops_of(a: ArchShape, lengths: npt.ArrayLike, shared: npt.ArrayLike, batch_size: int
                     ) -> FlopCount:
    """All sequences in fixed batches, in order (trainer.all_logits), without gradients."""
    n = len(lengths)
    if n == 0:
        return FlopCount()
    rows = np.full(((n + batch_size - 1) // batch_size) * batch_size, -1, dtype=np.int64)
    rows[:n] = np.arange(n)
    return grouped(a, rows.reshape(-1, batch_size), np.asarray(lengths, dtype=float), np.asarray(shared, dtype=float),
                   train=False)


@dataclass
class PoolShape:
    """The adversarial pool as the planner needs it: each entry's token length and shared-prefix length, in the
    order entries were added (numpy arrays: a 60-round run's pool holds 12,000 entries)."""

    lengths: np.ndarray = field(default_factory=lambda: np.zeros(0))
    shared: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def add(self, lengths: np.ndarray, shared: np.ndarray) -> None:
        self.lengths = np.concatenate([self.lengths, np.asarray(lengths, dtype=float)])
        self.shared = np.concatenate([self.shared, np.asarray(shared, dtype=float)])

    def __len__(self) -> int:
        return len(self.lengths)


class CostModel:
    """Phase costs of one sweep config; `run_plan` replays one run (model x seed) round by round."""

    def __init__(self, cfg: SweepConfig, accuracy: dict[str, float] | None = None) -> None:
        self.cfg = cfg
        self.accuracy = accuracy or {}  # model label -> share of attacked examples classified correctly (1 if absent)
        self._samplers: dict[str, ArchShape] = {}
        self._memo: dict[tuple, Phase] = {}

    def _once(self, key: tuple, make) -> Phase:
        """Phases that do not depend on the seed or round are computed once per size."""
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    # ---------------------------------------------------------------- helpers
    def sampler(self, a: AttackConfig) -> ArchShape | None:
        if a.type != "beast":
            return None
        sm = sampler_model(a)
        if sm.name_or_path not in self._samplers:
            self._samplers[sm.name_or_path] = model_arch(sm, self.cfg.family, causal_lm=True).shape
        return self._samplers[sm.name_or_path]

    def attack_costs(self, a: AttackConfig, arch: ModelArch, tt: TaskTokens, split: SplitTokens, idx: list[int],
                     n_models: int = 1) -> list[FlopCount] | None:
        before, after = split.around(a.placement, a.infix_fraction)
        kept = float(survival(a, tt.tokenizer, a.n_iterations).sum()) if a.type == "gcg" else None
        return F.attack_examples(a, arch.shape, before[idx], after[idx], self.cfg.parallel.score_chunk,
                                 self.sampler(a), n_models, kept)

    # ---------------------------------------------------------------- round 0
    def finetune(self, run: RunSpec, arch: ModelArch, tt: TaskTokens) -> Phase:
        ft, m = self.cfg.finetune, self.cfg.models[run.model_index]
        lengths = tt.train.clean().astype(float).tolist()
        n_random = m.random_token_defense if m.random_token_defense >= 0 else ft.random_token_defense
        if n_random > 0:
            for i in range(len(lengths)):
                if stream(run.seed, run.key, "random-token-defense", i).random() < 0.5:
                    lengths[i] += n_random
        order = epoch_order(len(lengths), ft.epochs, ft.batch_size, run.seed, (run.key, "finetune"))
        shared = [tt.train.lcp] * len(lengths)
        c = training_flops(arch.shape, lengths, shared, order, ft.batch_size, ft.micro_batch_size)
        note = f"{len(order)} examples, micro-batches of {ft.micro_batch_size}"
        return Phase("finetune", TRAIN, c, recorded="finetune_flops", note=note)

    # ---------------------------------------------------------------- every round
    def clean_eval(self, arch: ModelArch, tt: TaskTokens) -> Phase:
        lengths = tt.val.clean().astype(float).tolist()
        c = forward_flops_of(arch.shape, lengths, [tt.val.lcp] * len(lengths), self.cfg.finetune.eval_batch_size)
        return Phase("clean accuracy", FORWARD, c, note=f"{len(lengths)} validation examples")

    def eval_attack(self, a: AttackConfig, arch: ModelArch, tt: TaskTokens) -> Phase:
        """One evaluation of attack `a` (the same in every round it runs in)."""
        n = min(a.n_examples, len(tt.val))
        n_models = len(self.cfg.models) if a.ensemble else 1
        per = self.attack_costs(a, arch, tt, tt.val, list(range(n)), n_models)
        name = f"attack {a.name}"
        if per is None:
            return Phase(name, f"attack:{a.type}", FlopCount(), f"attacks/{a.name}/flops_nominal",
                         note=f"no FLOP model for attack type '{a.type}': not counted")
        full = F.total(per)
        acc = self.accuracy.get(arch.label, 1.0)
        exp = FlopCount(full.nominal * acc, full.actual * acc)
        note = f"{n} examples x accuracy {acc:g}"
        if a.ensemble:
            note += f"; ensemble: every one of {n_models} sizes proposes for every example (upper bound)"
        return Phase(name, f"attack:{a.type}", exp, f"attacks/{a.name}/flops_nominal", per, note)

    def transfer(self, a: AttackConfig, arch: ModelArch, tt: TaskTokens, n_sources: int) -> Phase:
        """Every active run's final strings scored on this run's model (one candidate per source and example)."""
        n = min(a.n_examples, len(tt.val))
        before, after = tt.val.around(a.placement, a.infix_fraction)
        chunk = self.cfg.parallel.score_chunk
        pairs, counts = np.unique(np.stack([before[:n], after[:n]], axis=1), axis=0, return_counts=True)
        parts = [F.times(F.total([F.prefix(arch.shape, int(b)),
                                  F.scoring(arch.shape, n_sources, int(b), a.n_attack_tokens + int(f), chunk)]), int(k))
                 for (b, f), k in zip(pairs, counts, strict=True)]
        c = F.total(parts)
        acc = self.accuracy.get(arch.label, 1.0)
        return Phase(f"transfer {a.name}", FORWARD, FlopCount(c.nominal * acc, c.actual * acc),
                     note=f"{n_sources} source runs")

    # ---------------------------------------------------------------- rounds >= 1
    def adversarial(self, run: RunSpec, rnd: int, n_rounds: int, arch: ModelArch, tt: TaskTokens,
                    pool: PoolShape) -> list[Phase]:
        """Training attack, training and pool refresh of round `rnd` of `n_rounds`; `pool` (length, shared
        prefix) grows."""
        cfg, adv, ft = self.cfg, self.cfg.advtrain, self.cfg.finetune
        n_it = adv.scheduled_iterations(rnd, n_rounds)
        base = cfg.train_attack()
        a = base.plugin.for_training(base, n_it, adv.n_new_examples)
        n_train = len(tt.train)
        picked = attacked_examples(a.n_examples, n_train, run.seed, run.key, rnd)
        per = self.attack_costs(a, arch, tt, tt.train, picked)
        attack = F.total(per) if per is not None else FlopCount()
        before, after = tt.train.around(a.placement, a.infix_fraction)
        idx = np.asarray(picked, dtype=np.int64)
        new_len, new_shared = before[idx] + a.n_attack_tokens + after[idx], np.minimum(tt.train.lcp, before[idx])
        pool.add(new_len, new_shared)
        new_losses = forward_flops_of(arch.shape, new_len, new_shared, ft.eval_batch_size)

        n_adv = min(len(pool), math.floor(adv.max_adv_fraction * adv.max_examples))
        n_clean = min(n_train, adv.max_examples - n_adv)
        clean_idx = np.sort(stream(run.seed, run.key, rnd, "clean-sample").choice(n_train, size=n_clean,
                                                                                   replace=False))
        if n_adv == len(pool):
            adv_len, adv_shared, note = pool.lengths, pool.shared, "every pool entry"
        else:  # evenly spaced through the pool sorted by (length, shared prefix): its mean, and its padding
            spread = np.lexsort((pool.shared, pool.lengths))[np.round(np.linspace(0, len(pool) - 1, n_adv))
                                                             .astype(np.int64)]
            adv_len, adv_shared = pool.lengths[spread], pool.shared[spread]
            note = f"{n_adv} of {len(pool)} pool entries, spread evenly over the pool's lengths"
        lengths = np.concatenate([adv_len, np.asarray(tt.train.clean(), dtype=float)[clean_idx]])
        shared = np.concatenate([adv_shared, np.full(len(clean_idx), float(tt.train.lcp))])
        order = epoch_order(len(lengths), adv.epochs, ft.batch_size, run.seed, (run.key, "advtrain", rnd))
        train = training_flops(arch.shape, lengths, shared, order, ft.batch_size, ft.micro_batch_size)
        refresh = forward_flops_of(arch.shape, pool.lengths, pool.shared, ft.eval_batch_size)
        why = "" if per is not None else f"no FLOP model for attack type '{a.type}': not counted"
        return [Phase("training attack", f"attack:{a.type}", attack, "defense_flops",
                      note=why or f"{len(picked)} examples x {n_it} iterations"),
                Phase("adversarial training", TRAIN, train, "defense_flops",
                      note=f"{n_adv} adversarial ({note}) + {n_clean} clean, {len(order)} examples"),
                Phase("new pool entries' losses", FORWARD, new_losses, "defense_flops",
                      note=f"{len(picked)} true-label losses under the model that attacked them"),
                Phase("pool refresh", FORWARD, refresh, "defense_flops", note=f"{len(pool)} pool entries")]

    # ---------------------------------------------------------------- a whole run
    def evaluations(self, arch: ModelArch, tt: TaskTokens) -> dict[str, Phase]:
        """Each evaluation attack's phase for one size, computed once."""
        return {a.name: self._once((arch.label, "attack", a.name), lambda a=a: self.eval_attack(a, arch, tt))
                for a in self.cfg.attacks}

    def run_plan(self, run: RunSpec, arch: ModelArch, tt: TaskTokens, n_rounds: int,
                 sources: dict[tuple[str, int], int]) -> RunPlan:
        """`sources[(attack, round)]`: the runs whose strings that round's transfer matrix of the attack spans
        (transfer_sources). Only the rounds each evaluation attack runs in (attacks.N.rounds) count its compute."""
        cfg = self.cfg
        plan = RunPlan(run, arch, tt)
        pool = PoolShape()
        clean = self._once((arch.label, "clean"), lambda: self.clean_eval(arch, tt))
        evals = self.evaluations(arch, tt)
        for rnd in range(n_rounds + 1):
            rp = RoundPlan(rnd)
            rp.phases += ([self.finetune(run, arch, tt)] if rnd == 0
                          else self.adversarial(run, rnd, n_rounds, arch, tt, pool))
            rp.phases.append(clean)
            mine = [a for a in cfg.attacks if a.rounds.evaluates(rnd, n_rounds)]
            rp.phases += [evals[a.name] for a in mine]
            rp.phases += [self._once((arch.label, "transfer", a.name, sources[(a.name, rnd)]),
                                     lambda a=a, n=sources[(a.name, rnd)]: self.transfer(a, arch, tt, n))
                          for a in mine if not a.ensemble]
            plan.rounds.append(rp)
        return plan
