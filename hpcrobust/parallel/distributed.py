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


BUCKET_NUMEL = 1 << 24  # float32 elements exchanged per collective (64 MB; a larger tensor goes alone)


class OrderedSum:
    """The sum of n_items lists of float32 tensors, item i computed on group rank i % k, added in item order.

    A fixed order keeps the sum bit-identical to one rank adding the items one after another, whatever k
    is (an all-reduce adds in an order that depends on k). The items arrive in waves, item j*k + r from rank
    r in wave j, so a rank holds one item (its gradients) at a time. The tensors are cut into buckets of
    about BUCKET_NUMEL elements, as DDP does; for each bucket a device `all_to_all` hands rank s slice s of
    every rank's bucket, and rank s adds those slices in item order (a reduce-scatter with a fixed order).
    `total()` all-gathers the summed slices. Besides the gradients a rank holds three buckets and 1/k of
    the sum.
    """

    def __init__(self, tg: TorchGroup, n_items: int, shapes: list[torch.Size], bucket_numel: int = BUCKET_NUMEL
                 ) -> None:
        self.tg, self.n_items, self.shapes = tg, n_items, shapes
        self.buckets: list[tuple[int, int, int]] = []  # (first tensor, end tensor, elements)
        start, numel = 0, 0
        for i, shape in enumerate(shapes):
            n = shape.numel()
            if numel and numel + n > bucket_numel:
                self.buckets.append((start, i, numel))
                start, numel = i, 0
            numel += n
        if numel:
            self.buckets.append((start, len(shapes), numel))
        self.parts: list[torch.Tensor | None] = [None] * len(self.buckets)
        self.wave = 0
        most = max((-(-n // tg.size) * tg.size for _, _, n in self.buckets), default=0)
        self._send = torch.zeros(most, dtype=torch.float32, device=tg.device)  # reused by every bucket and wave
        self._recv = torch.empty_like(self._send)

    @property
    def n_waves(self) -> int:
        return -(-self.n_items // self.tg.size)

    def add_wave(self, mine: list[torch.Tensor] | None) -> None:
        """This rank's item of the current wave (None when it has none left); collective over the group."""
        k = self.tg.size
        for b, (lo, hi, numel) in enumerate(self.buckets):
            width = -(-numel // k)
            send, recv = self._send[: k * width], self._recv[: k * width]
            if mine is not None:
                torch.cat([t.reshape(-1).float() for t in mine[lo:hi]], out=send[:numel])
                send[numel:].zero_()
            else:
                send.zero_()
            dist.all_to_all_single(recv, send, group=self.tg.pg)  # chunk r: this rank's slice of r's bucket
            for r, piece in enumerate(recv.view(k, width)):
                if self.wave * k + r < self.n_items:
                    part = self.parts[b]
                    self.parts[b] = piece.clone() if part is None else part.add_(piece)
        self.wave += 1

    def total(self) -> list[torch.Tensor]:
        """The summed tensors, in the given shapes (views into one gathered buffer per bucket)."""
        out: list[torch.Tensor] = []
        self._send = self._recv = None  # their memory goes back before the gathered sums are made
        for b, (lo, hi, _) in enumerate(self.buckets):
            part, self.parts[b] = self.parts[b], None
            full = torch.empty(self.tg.size, part.numel(), dtype=torch.float32, device=self.tg.device)
            dist.all_gather(list(full), part, group=self.tg.pg)
            flat, off = full.view(-1), 0
            for shape in self.shapes[lo:hi]:
                out.append(flat[off: off + shape.numel()].view(shape))
                off += shape.numel()
        return out


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
