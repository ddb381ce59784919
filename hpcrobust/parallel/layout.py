"""Rank layout: the world is split into groups; each group owns one run at a time.

Which rank computes a number changes nothing about the number (invariant 1); the layout only
decides who does which work, on which device, with how many threads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from hpcrobust.errors import UserError
from hpcrobust.models.config import ModelConfig
from hpcrobust.parallel.comm import Comm, world
from hpcrobust.parallel.config import ParallelConfig
from hpcrobust.parallel.distributed import make_groups
from hpcrobust.parallel.sizes import (
    SizeGroups,
    check_world,
    equal_groups,
    group_ranks,
    groups_of_runs,
    is_per_size,
    size_groups,
)
from hpcrobust.parallel.sizes import describe as describe_sizes


@dataclass
class Layout:
    world: Comm
    group: Comm
    group_index: int
    n_groups: int
    local_rank: int
    local_size: int
    device: torch.device
    threads: int
    shard: bool = False  # the group holds each model as FSDP shards (parallel.shard, a group of 2 or more)
    group_of_run: list[int] = field(default_factory=list)  # run index -> the group that computes it
    sizes: list[SizeGroups] | None = None  # the per-size layout's groups (None: equal groups)

    @property
    def is_root(self) -> bool:
        return self.world.rank == 0

    @property
    def is_group_leader(self) -> bool:
        return self.group.rank == 0

    def runs_of_group(self, group_index: int | None = None) -> list[int]:
        g = self.group_index if group_index is None else group_index
        return [i for i, owner in enumerate(self.group_of_run) if owner == g]

    def describe(self) -> str:
        """`3 rank(s) in 2 group(s)`, with each size's groups in the per-size layout."""
        text = f"{self.world.size} rank(s) in {self.n_groups} group(s)"
        return f"{text} ({describe_sizes(self.sizes)})" if self.sizes else text


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


GPU_ENV = ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "SLURM_GPUS_ON_NODE", "CUDA_VISIBLE_DEVICES")


def granted_gpus() -> str:
    """`NAME=value` of the first variable saying that this node was given GPUs ('' when none says so)."""
    for name in GPU_ENV:
        value = os.environ.get(name, "").strip()
        if value and value not in ("-1", "NoDevFiles", "none") and not (name == "SLURM_GPUS_ON_NODE" and value == "0"):
            return f"{name}={value}"
    return ""


def check_gpus_usable(kind: str) -> None:
    """`auto` on a node that was given GPUs but where torch sees none would silently train on the CPU, many
    times slower: a CPU-only torch build, or a driver that does not load. Say so before any work."""
    if kind != "auto" or torch.cuda.is_available():
        return
    granted = granted_gpus()
    if granted:
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise UserError(f"parallel.device: auto: this node has GPUs ({granted}) but torch ({torch.__version__},"
                        f" {build}) sees no CUDA device; install a CUDA build of torch or check the driver, or set"
                        f" parallel.device: cpu to run on the CPU anyway")


def pick_device(kind: str, local_rank: int) -> torch.device:
    if kind == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if kind == "cuda":
        raise UserError("parallel.device: cuda was asked for but no CUDA device is visible")
    return torch.device("cpu")


def check_parallel(cfg: ParallelConfig, world_size: int, sizes: list[SizeGroups] | None = None) -> None:
    if sizes is not None:
        check_world(sizes, world_size)
    elif world_size % cfg.ranks_per_group:
        raise UserError(f"parallel.ranks_per_group: {cfg.ranks_per_group} does not divide the"
                        f" {world_size} ranks")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UserError("parallel.device: cuda was asked for but no CUDA device is visible")
    check_gpus_usable(cfg.device)


def make_layout(cfg: ParallelConfig, models: list[ModelConfig], n_seeds: int) -> Layout:
    """Collective over the world: this rank's group, device and threads, for a job of `n_seeds` seeds of
    `models` (the per-size layout when any model sets ranks or groups)."""
    w = world()
    sizes = size_groups(models, cfg.ranks_per_group, n_seeds) if is_per_size(models) else None
    check_parallel(cfg, w.size, sizes)
    if sizes is not None:
        ranks, owners = group_ranks(sizes), groups_of_runs(sizes, n_seeds)
    else:
        ranks, owners = equal_groups(w.size, cfg.ranks_per_group, len(models) * n_seeds)
    gi = next(g for g, members in enumerate(ranks) if w.rank in members)
    group = w.split(gi, w.rank)
    local_rank, local_size = w.local_rank_and_size()
    device = pick_device(cfg.device, local_rank)
    if cfg.threads_per_rank:
        threads = cfg.threads_per_rank
    elif "SLURM_CPUS_PER_TASK" in os.environ and "SLURM_STEP_ID" in os.environ:
        threads = int(os.environ["SLURM_CPUS_PER_TASK"])
    else:
        threads = max(1, _cores() // local_size)
    torch.set_num_threads(threads)
    tg = make_groups(w, ranks, device) if any(len(r) > 1 for r in ranks) else None
    group.tensors = tg  # the group's device collectives (groups of 2 or more ranks)
    return Layout(w, group, gi, len(ranks), local_rank, local_size, device, threads, cfg.shard and tg is not None,
                  owners, sizes)
