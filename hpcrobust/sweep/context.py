"""What every step of a sweep is handed: one context instead of long argument lists."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from hpcrobust.attacks.base import AttackEnv, AttackResult
from hpcrobust.attacks.evaluate import EvalSet
from hpcrobust.config import ModelConfig, SweepConfig
from hpcrobust.models.backoff import Backoff
from hpcrobust.models.classifier import Classifier
from hpcrobust.parallel.layout import Layout
from hpcrobust.store.results import ResultsFile
from hpcrobust.store.schema import attack_arrays
from hpcrobust.sweep.hooks import Hooks
from hpcrobust.sweep.plan import RunSpec, SweepPlan
from hpcrobust.sweep.provenance import Attempt
from hpcrobust.tasks import TaskData


@dataclass
class SweepContext:
    cfg: SweepConfig
    layout: Layout
    task: TaskData
    results: ResultsFile
    plan: SweepPlan
    hooks: Hooks = field(default_factory=Hooks)
    started: float = field(default_factory=time.time)  # when this process group started (device-hours count from it)
    attempt: Attempt | None = None  # set by the driver (sweep/provenance.py)
    backoffs: dict[str, Backoff] = field(default_factory=dict)  # per run: batch sizes that fit, for every round
    fake_oom_above: int = 0  # test-only (debug.fake_oom_above, set by sweep/debug.py on the ranks it names)

    @property
    def eval_set(self) -> EvalSet:
        return EvalSet(self.task.val, self.cfg.parallel.score_chunk)

    def backoff(self, run: RunSpec) -> Backoff:
        """The run's out-of-memory back-off: what one round learned stays for the next."""
        if run.key not in self.backoffs:
            self.backoffs[run.key] = Backoff(fake_oom_above=self.fake_oom_above, cuts=not self.layout.shard)
        return self.backoffs[run.key]

    def model(self, run: RunSpec) -> ModelConfig:
        return self.cfg.models[run.model_index]

    def attack_env(self, run: RunSpec, rnd: int, clf: Classifier, purpose: str = "eval",
                   shared: np.ndarray | None = None) -> AttackEnv:
        return AttackEnv(run.seed, purpose, run.key, rnd, clf, self.cfg.parallel.score_chunk, self.cfg.family,
                         shared)

@dataclass
class RoundState:
    """One run's round while it is being assembled (on the ranks of its group)."""

    run: RunSpec
    clf: Classifier | None  # None once no later phase of the round needs it on this rank (freed)
    correct: np.ndarray  # [n_val] clean prediction correct
    scalars: dict
    arrays: dict = field(default_factory=dict)
    results: dict[str, AttackResult] = field(default_factory=dict)

    def add(self, res: AttackResult) -> None:
        self.results[res.name] = res
        self.arrays.update(attack_arrays(res))
