"""A training phase's last finished step, kept on disk so that a killed or requeued run goes on from it.

What is kept is everything the next step depends on: the weights, the optimizer's and the schedule's state,
the step reached, the loss summed so far, and the FLOPs the group has spent. The example order is a pure
function of (seed, run, phase), and no step draws random numbers, so the steps after a resume are the steps
an uninterrupted run makes, and the phase ends with the same bits.

The group leader writes (every rank of an unsharded group holds the same state); every rank reads the file
itself, so weights never travel through MPI. A save is whole or absent (a temporary file, flushed, renamed).
Files are read with `torch.load(weights_only=True)`. A sharded group keeps its steps with
torch.distributed.checkpoint instead (training/shardsave.py), behind the same three calls: due, save, load.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from hpcrobust import savepoint
from hpcrobust.log import log
from hpcrobust.models.flops import FlopCount
from hpcrobust.parallel.comm import Comm
from hpcrobust.store.writer import fsync_path


@dataclass
class StepSaver:
    """Where (`path`) and how often (`every_s`; 0 = after every step) a training phase keeps its last step."""

    path: Path
    every_s: float
    group: Comm
    saves: int = 0  # made by this process (tests, logs)
    resumed_at: int = 0  # the step this phase went on from (0: from the start)
    clock: savepoint.SaveClock = field(init=False)

    def __post_init__(self) -> None:
        self.clock = savepoint.SaveClock(self.every_s)

    def due(self) -> bool:
        """Whether to save after this step (savepoint.SaveClock); the leader decides for the whole group."""
        return bool(self.group.bcast(self.clock.due()))

    def _done(self, scalars: dict) -> None:
        self.saves += 1
        if self.clock.ticked():
            log(f"{' '.join(scalars.get('key', ()))}: kept step {scalars.get('step')} of {scalars.get('n_steps')}"
                " (a save was requested)", all_ranks=self.group.rank == 0)

    def save(self, scalars: dict, model: nn.Module, opt: torch.optim.Optimizer, sched) -> None:
        """Collective over the group; the leader writes. `scalars`: the step, the loss so far, ... (JSON-able)."""
        state = {**scalars, "model": model.state_dict(), "optim": opt.state_dict(), "sched": sched.state_dict()}
        if self.group.rank == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            torch.save(state, tmp)
            fsync_path(tmp)
            os.replace(tmp, self.path)
            fsync_path(self.path.parent)
        self.group.barrier()
        self._done(scalars)

    def load(self, check: dict, model: nn.Module, opt: torch.optim.Optimizer, sched) -> dict | None:
        """Load the kept step into model, optimizer and schedule when it belongs to this phase (`check`: the fields
        that must match) and return its scalars; else None (nothing is changed)."""
        exists = self.group.bcast(self.path.is_file() if self.group.rank == 0 else None)
        if not exists:
            return None
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        if any(state.get(k) != v for k, v in check.items()):
            return None  # another phase's (or config's) steps: start afresh
        model.load_state_dict(state.pop("model"))
        opt.load_state_dict(state.pop("optim"))
        sched.load_state_dict(state.pop("sched"))
        return state

    def clear(self) -> None:
        if self.group.rank == 0:
            self.path.unlink(missing_ok=True)


def flops_state(spent: FlopCount) -> list[int]:
    return [spent.nominal, spent.actual, spent.forward_tokens, spent.backward_tokens]


def flops_from_state(values: list[int]) -> FlopCount:
    return FlopCount(*(int(v) for v in values))
