"""What a plan holds: per model size, per job, and for the whole sweep (rendered by render.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hpcrobust.planner.devices import Device
from hpcrobust.planner.memory import MemoryPlan


@dataclass
class SizePlan:
    """One model of the config; FLOPs per run are the mean over its seeds."""

    label: str
    name: str
    source: str  # where its architecture came from
    n_params: int
    dtype: str
    n_runs: int
    rounds: int
    finetune: float  # nominal FLOPs
    attacks: dict[str, float]  # nominal FLOPs of one evaluation (one round it runs in), each evaluation attack
    advtrain: list[float]  # nominal FLOPs of rounds 1..R (defense_flops)
    other: float  # clean accuracy and transfer, all rounds (not recorded)
    nominal: float  # one run, every phase
    actual: float
    memory: MemoryPlan
    fits: bool | None
    round_s: list[float]  # one run's rounds (slowest seed)
    run_s: float
    transfer_s: float  # of run_s: the transfer matrix, which happens outside the rounds' recorded wall_time
    utilisation: dict[str, float]
    accuracy: float  # assumed share of attacked examples classified correctly
    attack_rounds: dict[str, int] = field(default_factory=dict)  # rounds each evaluation attack runs in
    ranks: int = 1  # ranks of the group that holds one of its runs
    sharded: bool = False  # parallel.shard with a group of 2 or more: a rank holds 1/k of the model (FSDP)


@dataclass
class JobPlan:
    label: str
    seeds: list[int]
    output: str
    ranks: int
    groups: int
    gpus: int
    runs_by_group: list[list[str]]
    round_s: list[float]  # each round: the busiest group (rounds schedule) or the longest run's round (queue)
    wall_s: float
    device_hours: float  # allocated: wall x GPUs (x ranks on CPU)
    busy_hours: float  # the runs' own time x the ranks of their group
    nodes: int = 1
    shape: str = ""  # how its ranks are grouped: `8 group(s) of 1`, or each size's groups (per-size layout)
    group_ranks: list[int] = field(default_factory=list)  # ranks of each group
    schedule: str = "queue"  # parallel.schedule: queue (per-run commits, no barrier) or rounds
    group_items: list[int] = field(default_factory=list)  # queue: run rounds each group computes (simulated)
    group_busy_s: list[float] = field(default_factory=list)  # queue: seconds each group computes (simulated)


@dataclass
class Plan:
    config: str
    device: Device
    device_how: str
    utilisation_how: str
    accuracy_how: str
    tokens: list[str]
    sizes: list[SizePlan]
    jobs: list[JobPlan]
    time_limit_s: float
    max_requeues: int
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0  # how long planning took
    startup_s: float = 0.0  # once per job, from calibration
    sharded: bool = False  # parallel.shard: a rank holds 1/k of each model (FSDP)

    @property
    def nominal(self) -> float:
        return sum(s.nominal * s.n_runs for s in self.sizes)

    @property
    def device_hours(self) -> float:
        return sum(j.device_hours for j in self.jobs)

    @property
    def wall_s(self) -> float:
        return max(j.wall_s for j in self.jobs)
