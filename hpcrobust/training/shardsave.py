"""A sharded (FSDP) training phase's last finished step, kept with torch.distributed.checkpoint (DCP).

Each rank of the group holds 1/k of the weights and of the optimizer's state, so no rank can write the whole
state alone: every rank writes its shards into one DCP folder (collective over the group's torch group), and
the group leader adds the scalar part (step, loss so far, FLOPs, the schedule's state) as JSON. The folder is
whole or absent: it is written as `steps.dcp.tmp/`, flushed, and renamed over `steps.dcp/` (the previous save
is first moved to `steps.dcp.old/`, which a load puts back if a kill came between the two renames). Loading
reads DCP's own format (raw tensor bytes, plus a `.metadata` file that DCP itself pickles and unpickles: only
folders this sweep wrote are loaded) and JSON, never pickled objects of ours; DCP reshards on load, so a group
of another size can go on from the same folder.

The state dicts are the FQN-keyed ones of torch.distributed.checkpoint.state_dict (get_state_dict /
set_state_dict), which understand FSDP's `fully_shard` (parallel/sharding.py).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from hpcrobust.store.writer import fsync_path
from hpcrobust.training.resume import StepSaver

SCALARS = "scalars.json"


@dataclass
class ShardedStepSaver(StepSaver):
    """StepSaver's due/save/load for a sharded group; `pg` is the group's torch process group."""

    pg: object = None

    @property
    def _tmp(self) -> Path:
        return self.path.with_name(self.path.name + ".tmp")

    @property
    def _old(self) -> Path:
        return self.path.with_name(self.path.name + ".old")

    def save(self, scalars: dict, model: nn.Module, opt: torch.optim.Optimizer, sched) -> None:
        """Collective over the group: every rank writes its shards, the leader the scalars and the renames."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        lead = self.group.rank == 0
        if lead:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp.mkdir(parents=True)
        self.group.barrier()
        msd, osd = get_state_dict(model, opt)
        dcp.save({"model": msd, "optim": osd}, storage_writer=dcp.FileSystemWriter(self._tmp, sync_files=True),
                 process_group=self.pg)
        self.group.barrier()  # every rank's shards are on disk
        if lead:
            (self._tmp / SCALARS).write_text(json.dumps({**scalars, "sched": sched.state_dict()}))
            for f in self._tmp.iterdir():
                fsync_path(f)
            fsync_path(self._tmp)
            if self.path.exists():
                shutil.rmtree(self._old, ignore_errors=True)
                os.replace(self.path, self._old)
            os.replace(self._tmp, self.path)
            fsync_path(self.path.parent)
            shutil.rmtree(self._old, ignore_errors=True)
        self.group.barrier()
        self._done(scalars)

    def load(self, check: dict, model: nn.Module, opt: torch.optim.Optimizer, sched) -> dict | None:
        """Load the kept step into the sharded model, optimizer and schedule (collective over the group) when it
        belongs to this phase, and return its scalars; else None."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        text = None
        if self.group.rank == 0:
            if not self.path.exists() and self._old.is_dir():  # killed between the two renames
                os.replace(self._old, self.path)
            if (self.path / SCALARS).is_file():
                text = (self.path / SCALARS).read_text()
        text = self.group.bcast(text)
        if text is None:
            return None
        scalars = json.loads(text)
        if any(scalars.get(k) != v for k, v in check.items()):
            return None  # another phase's (or config's) steps: start afresh
        msd, osd = get_state_dict(model, opt)
        state = {"model": msd, "optim": osd}
        dcp.load(state, storage_reader=dcp.FileSystemReader(self.path), process_group=self.pg)
        set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
        sched.load_state_dict(scalars.pop("sched"))
        return scalars

    def clear(self) -> None:
        if self.group.rank == 0:
            shutil.rmtree(self.path, ignore_errors=True)
