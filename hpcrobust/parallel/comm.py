"""The only place that touches MPI: a thin communicator with a serial stand-in.

A plain `hpcrobust run` works without any MPI library installed (one rank, serial stand-in);
under `mpiexec` or `srun` the same code runs on mpi4py's COMM_WORLD.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

_MPI = None
ABORT_GRACE_S = 1.0
_LAUNCH_VARS = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "SLURM_STEP_NUM_TASKS",
                "HYDRA_CONTROL_FD", "PMI_FD")


def launched_under_mpi() -> bool:
    return any(v in os.environ for v in _LAUNCH_VARS)


def mpi():
    """mpi4py.MPI, or None when no MPI library can be loaded and we were not started by a launcher."""
    global _MPI
    if _MPI is None:
        try:
            from mpi4py import MPI  # noqa: PLC0415

            _MPI = MPI
        except (ImportError, RuntimeError) as exc:
            if launched_under_mpi():
                raise RuntimeError(f"started under an MPI launcher but mpi4py cannot load MPI: {exc}") from exc
            _MPI = False
    return _MPI or None


class Comm:
    """What the rest of the code may ask of a communicator; names say what is shared."""

    def __init__(self, comm: Any = None) -> None:
        self._c = comm
        self.tensors: Any = None  # the same ranks' torch.distributed group (parallel/distributed.py), when made

    @property
    def rank(self) -> int:
        return self._c.Get_rank() if self._c is not None else 0

    @property
    def size(self) -> int:
        return self._c.Get_size() if self._c is not None else 1

    @property
    def raw(self) -> Any:
        return self._c

    def barrier(self) -> None:
        if self._c is not None:
            self._c.Barrier()

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return self._c.bcast(obj, root=root) if self._c is not None else obj

    def allgather(self, obj: Any) -> list:
        return self._c.allgather(obj) if self._c is not None else [obj]

    def gather(self, obj: Any, root: int = 0) -> list | None:
        return self._c.gather(obj, root=root) if self._c is not None else [obj]

    def allreduce_max(self, value: float) -> float:
        if self._c is None:
            return value
        return self._c.allreduce(value, op=mpi().MAX)

    def split(self, color: int, key: int) -> Comm:
        if self._c is None:
            return Comm(None)
        return Comm(self._c.Split(color, key))

    def local_rank_and_size(self) -> tuple[int, int]:
        """Rank among the ranks on this node, and how many share it."""
        if self._c is None:
            return 0, 1
        node = self._c.Split_type(mpi().COMM_TYPE_SHARED, key=self.rank)
        out = node.Get_rank(), node.Get_size()
        node.Free()
        return out

    def abort(self, code: int = 1) -> None:
        """End every rank now; used when one rank fails so that nobody waits in a collective."""
        sys.stdout.flush()
        sys.stderr.flush()
        if self._c is not None and self.size > 1:
            time.sleep(ABORT_GRACE_S)  # the launcher forwards what this rank printed before it kills the job
            mpi().COMM_WORLD.Abort(code)
        os._exit(code)


def world() -> Comm:
    m = mpi()
    return Comm(m.COMM_WORLD if m is not None else None)
