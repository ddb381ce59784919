"""What a sweep will do, fixed before any work: its runs in a fixed order and each run's rounds.

Nothing here depends on the number of ranks; the layout only decides who does which run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hpcrobust import __version__
from hpcrobust.config import AttackConfig, SweepConfig, science_hash, to_yaml
from hpcrobust.models.config import model_label
from hpcrobust.models.loading import count_parameters
from hpcrobust.store.schema import FORMAT, SCHEMA_VERSION
from hpcrobust.training.adversarial import equal_compute_rounds


@dataclass(frozen=True)
class RunSpec:
    index: int
    key: str  # the run's name in the results file
    model_index: int
    seed: int


def plan_runs(cfg: SweepConfig) -> list[RunSpec]:
    """Runs in a fixed order (model-major), independent of how many ranks will share them."""
    runs = []
    for mi, m in enumerate(cfg.models):
        for seed in cfg.seeds:
            runs.append(RunSpec(len(runs), f"{model_label(m)}__seed{seed}", mi, seed))
    return runs


@dataclass
class SweepPlan:
    cfg: SweepConfig
    identity: str = ""  # science_hash of the config and its inputs (default: of the config alone)
    inputs: str = ""  # the inputs' digests (YAML), stored beside it
    runs: list[RunSpec] = field(init=False)
    rounds: dict[int, int] = field(init=False)  # run index -> its last round

    def __post_init__(self) -> None:
        cfg = self.cfg
        self.identity = self.identity or science_hash(cfg)
        self.runs = plan_runs(cfg)
        per_model = [cfg.advtrain.rounds] * len(cfg.models)
        if cfg.advtrain.equal_compute:
            per_model = equal_compute_rounds(cfg.advtrain.rounds,
                                             [count_parameters(m, cfg.family) for m in cfg.models])
        for i, m in enumerate(cfg.models):
            if m.rounds >= 0:
                per_model[i] = m.rounds
        self.rounds = {r.index: per_model[r.model_index] for r in self.runs}

    def n_rounds(self, run: RunSpec) -> int:
        return self.rounds[run.index]

    @property
    def max_round(self) -> int:
        return max(self.rounds.values())

    def active(self, rnd: int) -> list[RunSpec]:
        """The runs that have a round `rnd`."""
        return [r for r in self.runs if rnd <= self.n_rounds(r)]

    def evaluates(self, a: AttackConfig, run: RunSpec, rnd: int) -> bool:
        """Whether evaluation attack `a` runs on `run` in round `rnd` (attacks.N.rounds, against the run's own last
        round)."""
        return a.rounds.evaluates(rnd, self.n_rounds(run))

    def evaluated(self, a: AttackConfig, runs: list[RunSpec], rnd: int) -> list[RunSpec]:
        """Those of `runs` that attack `a` evaluates in round `rnd`."""
        return [r for r in runs if self.evaluates(a, r, rnd)]

    def header(self) -> dict:
        """The results file's root attributes."""
        return {"format": FORMAT, "schema_version": SCHEMA_VERSION, "hpcrobust_version": __version__,
                "config": to_yaml(self.cfg), "science_hash": self.identity, "inputs": self.inputs,
                "experiment": self.cfg.experiment}
