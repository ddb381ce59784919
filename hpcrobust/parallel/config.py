"""How a sweep's ranks are laid out: group size, threads, device, scoring chunk."""

from __future__ import annotations

from dataclasses import dataclass

from hpcrobust.fields import setting


@dataclass
class ParallelConfig:
    ranks_per_group: int = setting(1, lo=1, hi=10**6, doc="MPI ranks that share one run")
    threads_per_rank: int = setting(0, lo=0, hi=4096, doc="torch threads per rank (0 = the cores of this rank, shared"
                                                          " among the ranks on its node); results do not depend on it")
    device: str = setting("auto", choices=("auto", "cpu", "cuda"), doc="auto: CUDA per local rank when present")
    score_chunk: int = setting(64, lo=1, hi=10**6, doc="candidates per scoring chunk (fixed, so results do not depend"
                                                       " on ranks)")
    shard: bool = setting(False, doc="shard each run's model across its group's ranks with PyTorch FSDP (needs"
                                     " ranks_per_group > 1, or per size models.N.ranks > 1; NCCL on GPUs, gloo on"
                                     " CPU)")
    schedule: str = setting("queue", choices=("queue", "rounds"), doc="queue: each group takes the next runnable"
                            " (run, round), largest model first, and commits it alone as soon as it is done; rounds:"
                            " every run's round r, then all ranks commit round r together (a barrier)")
