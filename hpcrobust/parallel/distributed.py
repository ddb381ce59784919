"""torch.distributed built from the MPI world, for the collectives that move tensors (gradients, scores, shards).

MPI stays the launcher and the control plane: whatever started the ranks (`mpiexec`, `srun --mpi=pmi2`,
submitit) gave them an MPI world, and world rank 0 picks a TCP rendezvous address that MPI hands to every
rank. So nothing about the launch changes, and no MASTER_ADDR/MASTER_PORT has to be set by hand. The
backend is NCCL when the ranks use CUDA and gloo on CPU. One torch process group is made per MPI group
of 2 or more ranks, in the same order on every rank, as `new_group` requires.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from hpcrobust.parallel.comm import Comm

TIMEOUT = timedelta(minutes=30)  # a group waits this long in a collective before torch gives up


@dataclass
class TorchGroup:
    """One MPI group's torch process group (the ranks that hold one run's shards)."""

    pg: object  # torch.distributed.ProcessGroup
    ranks: list[int]  # world ranks, in group-rank order
    device: torch.device

    @property
    def size(self) -> int:
        return len(self.ranks)

    @property
    def rank(self) -> int:
        """This process's rank within the group."""
        return self.ranks.index(dist.get_rank())


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def _rendezvous_address() -> tuple[str, int]:
    """This host's address and a free TCP port (MASTER_ADDR/MASTER_PORT win when a user set them)."""
    addr = os.environ.get("MASTER_ADDR", "")
    if not addr:
        try:
            addr = socket.gethostbyname(socket.gethostname())
        except OSError:  # a host name that does not resolve (containers): fine for ranks on this one host
            addr = "127.0.0.1"
    if os.environ.get("MASTER_PORT"):
        return addr, int(os.environ["MASTER_PORT"])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return addr, int(s.getsockname()[1])


def init_from_mpi(world: Comm, device: torch.device) -> None:
    """Start torch.distributed over the MPI world (once per process; collective over the world)."""
    if dist.is_initialized():
        return
    addr, port = world.bcast(_rendezvous_address() if world.rank == 0 else None)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend_for(device), init_method=f"tcp://{addr}:{port}", rank=world.rank,
                            world_size=world.size, timeout=TIMEOUT)


def make_groups(world: Comm, groups: list[list[int]], device: torch.device) -> TorchGroup | None:
    """A torch group for every MPI group of 2 or more ranks (`groups`: each group's world ranks), created
    collectively in group order on every rank; returns this rank's (None when its group is one rank)."""
    init_from_mpi(world, device)
    mine = None
    for ranks in groups:
        if len(ranks) < 2:
            continue
        pg = dist.new_group(ranks=ranks, backend=backend_for(device))
        if world.rank in ranks:
            mine = TorchGroup(pg, ranks, device)
    return mine


def all_gather_rows(tg: TorchGroup, rows: torch.Tensor, n_rows: list[int]) -> list[torch.Tensor]:
    """Each rank's [n_rows[r], ...] tensor, gathered on every rank of the group as device tensors.

    Shapes differ by rank, so each is padded to the longest before the all-gather and cut back after.
    """
    longest = max(n_rows) if n_rows else 0
    pad = rows.new_zeros((longest, *rows.shape[1:]))
    pad[: rows.shape[0]] = rows
    out = [torch.empty_like(pad) for _ in range(tg.size)]
    dist.all_gather(out, pad.contiguous(), group=tg.pg)
    return [t[:n] for t, n in zip(out, n_rows, strict=True)]


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
