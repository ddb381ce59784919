"""MPI collectives named for what they share: control, records and small results.

Tensors that are large or per candidate (gradient sums, candidate scores, FSDP shards) move on the
device instead, through torch.distributed (parallel/distributed.py).

Order is always fixed by an index that does not depend on the rank count (micro-batch index,
example index, candidate chunk index), so the same numbers come out of 1, 2 or 3 ranks.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import TypeVar

from hpcrobust.errors import AgreedFailure, UserError
from hpcrobust.parallel.comm import Comm

T = TypeVar("T")


def my_share(comm: Comm, n_items: int) -> list[int]:
    """Round-robin: item i belongs to rank i % size."""
    return list(range(comm.rank, n_items, comm.size))


def share_indexed(comm: Comm, items: dict[int, T]) -> dict[int, T]:
    """Every rank contributes {index: value}; every rank gets the union."""
    if comm.size == 1:
        return dict(items)
    out: dict[int, T] = {}
    for part in comm.allgather(items):
        out.update(part)
    return out


def broadcast_from_root(comm: Comm, obj: T) -> T:
    return comm.bcast(obj, root=0)


def broadcast_candidates(world: Comm, table: T) -> T:
    """RandomToken candidates drawn once on world rank 0, so every model size scores the very same ones."""
    return world.bcast(table, root=0)


def ranks_agree(comm: Comm, digest: str) -> bool:
    """True when every rank of the group holds the same state digest."""
    return len(set(comm.allgather(digest))) == 1


def gather_rank_facts(world: Comm, facts: T) -> list[T]:
    """Every rank's description of itself (host, device, threads), in world-rank order, on every rank."""
    return world.allgather(facts)


def allgather_records(comm: Comm, items: dict) -> dict:
    """Union of every rank's {key: value} (per-run results that all ranks need, e.g. final suffixes)."""
    return share_indexed(comm, items)


def agree(comm: Comm, fn: Callable[[], T]) -> T:
    """Run `fn` on every rank; if it fails on any rank, every rank raises the first rank's error.

    A user error becomes the same UserError everywhere (one line, exit 2); anything else an AgreedFailure
    carrying that rank's traceback. Either way no rank is left waiting in a later collective.
    """
    try:
        value, err = fn(), None
    except UserError as exc:
        value, err = None, ("user", str(exc))
    except Exception:  # noqa: BLE001 - reported on every rank below
        prefix = f"[rank {comm.rank}] " if comm.size > 1 else ""
        value, err = None, ("internal", prefix + traceback.format_exc().rstrip("\n").replace("\n", "\n" + prefix))
    errors = [e for e in comm.allgather(err) if e]
    if errors:
        kind, text = errors[0]
        if kind == "user":
            exc = UserError(text)
            exc.agreed = True  # every rank raises it: nobody is left in a collective
            raise exc
        raise AgreedFailure(text)
    return value
