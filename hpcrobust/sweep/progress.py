"""What a run's round has finished before it is committed, kept so that a killed or requeued run resumes
inside the round instead of from its start.

    <output>.ckpt/<run>/round_RRRR.train/   while the round trains:
        train_attack.state.h5           the training attack's state while it runs (attacks/state.py)
        train_attack.h5                 the training attack's result (adversarial rounds), once it is done
        steps.pt                        the last kept training step (training/resume.py)
        steps.dcp/                      ... of a sharded model: its shards and scalars (training/shardsave.py)
    <output>.ckpt/<run>/round_RRRR/     written as soon as the round's training is done (not at the round's end),
                                        and then the .train folder is removed:
        progress.json                   the training phase's numbers (train loss, FLOPs, ...)
        attacks/<name>.state.h5         an evaluation attack's state while it runs (attacks/state.py)
        attacks/<name>.h5               each evaluation attack's result, as soon as it is done
        attacks/<name>.ensemble.state.h5  (the first member run of an ensemble) the ensemble's state while it runs

A resumed round loads the trained model from its own checkpoint, skips every attack whose result is there and
goes on inside an attack from its kept state (every `launch.save_every_min` minutes, or on a save request:
savepoint.py), so it stores what an uninterrupted round stores (weights are float32 safetensors, numbers are
exact). A state file is removed once its attack's result is kept.
Every save is whole or absent: a temporary sibling, flushed, then renamed. The group leader writes; every
rank of the group gets what it reads (a broadcast), so all ranks of a group always agree on what to skip.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np

from hpcrobust.attacks.base import AttackResult
from hpcrobust.attacks.state import AttackSaver
from hpcrobust.parallel.comm import Comm
from hpcrobust.store import schema as S
from hpcrobust.store.schema import attack_arrays, decode_text
from hpcrobust.store.writer import fsync_path
from hpcrobust.sweep.context import SweepContext
from hpcrobust.sweep.plan import RunSpec
from hpcrobust.training.resume import StepSaver
from hpcrobust.training.shardsave import ShardedStepSaver

PROGRESS_FILE = "progress.json"
ATTACKS_DIR = "attacks"
TRAIN_ATTACK_FILE = "train_attack.h5"
STEPS_FILE = "steps.pt"
SHARDED_STEPS = "steps.dcp"


def round_dir(ctx: SweepContext, run: RunSpec, rnd: int) -> Path:
    return ctx.results.checkpoint_dir(run.key, rnd)


def training_dir(ctx: SweepContext, run: RunSpec, rnd: int) -> Path:
    d = round_dir(ctx, run, rnd)
    return d.with_name(d.name + ".train")


def step_saver(ctx: SweepContext, run: RunSpec, rnd: int) -> StepSaver:
    """Where the round's training keeps its steps: one file, or for a sharded model a DCP folder of shards."""
    every_s = 60.0 * ctx.cfg.launch.save_every_min
    if ctx.layout.shard:
        return ShardedStepSaver(training_dir(ctx, run, rnd) / SHARDED_STEPS, every_s, ctx.layout.group,
                                pg=ctx.layout.group.tensors.pg)
    return StepSaver(training_dir(ctx, run, rnd) / STEPS_FILE, every_s, ctx.layout.group)


def training_done(ctx: SweepContext, run: RunSpec, rnd: int) -> None:
    """The round's checkpoint is saved: what its training kept is no longer needed."""
    if ctx.layout.is_group_leader:
        shutil.rmtree(training_dir(ctx, run, rnd), ignore_errors=True)


def trained_scalars(ctx: SweepContext, run: RunSpec, rnd: int) -> dict | None:
    """The training phase's numbers when round `rnd` of `run` was trained in an earlier attempt (collective over
    the group); None when it must train."""
    lay = ctx.layout
    found = None
    if lay.is_group_leader:
        path = round_dir(ctx, run, rnd) / PROGRESS_FILE
        if path.is_file():
            found = json.loads(path.read_text())["scalars"]
    return lay.group.bcast(found)


def progress_text(scalars: dict) -> str:
    """The training phase's numbers as JSON (Python's float repr round-trips exactly, NaN included)."""
    return json.dumps({"scalars": {k: (v.item() if isinstance(v, np.generic) else v) for k, v in scalars.items()}})


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(path.parent)


def attack_file(ctx: SweepContext, run: RunSpec, rnd: int, name: str | None) -> Path:
    """An evaluation attack's result file, or the training attack's (name None)."""
    if name is None:
        return training_dir(ctx, run, rnd) / TRAIN_ATTACK_FILE
    return round_dir(ctx, run, rnd) / ATTACKS_DIR / f"{name}.h5"


def state_file(ctx: SweepContext, run: RunSpec, rnd: int, name: str | None) -> Path:
    """Where an evaluation attack (or the training attack: name None) keeps its state while it runs."""
    res = attack_file(ctx, run, rnd, name)
    return res.with_name(res.stem + ".state.h5")


def attack_saver(ctx: SweepContext, run: RunSpec, rnd: int, name: str, training: bool = False) -> AttackSaver:
    """The saver of an attack's state inside the round (any layout: the state holds no weights)."""
    label = f"{run.key} round {rnd}: {'training attack ' if training else ''}{name}"
    return AttackSaver(state_file(ctx, run, rnd, None if training else name), 60.0 * ctx.cfg.launch.save_every_min,
                       ctx.layout.group, label)


def ensemble_saver(ctx: SweepContext, first: RunSpec, rnd: int, name: str, comm: Comm) -> AttackSaver:
    """The saver of an ensemble attack over the sizes of a seed (collective over `comm`, whose rank 0 writes),
    kept beside the first member run's attack results. It is removed when the ensemble ends: an ensemble that
    finished in a killed attempt runs again (as transfer does), one cut inside goes on from its last example."""
    path = round_dir(ctx, first, rnd) / ATTACKS_DIR / f"{name}.ensemble.state.h5"
    return AttackSaver(path, 60.0 * ctx.cfg.launch.save_every_min, comm, f"{first.key} round {rnd}: {name}")


def save_attack(ctx: SweepContext, run: RunSpec, rnd: int, res: AttackResult, training: bool = False) -> None:
    """The leader keeps a finished attack's result (the datasets a round stores, and its name)."""
    if ctx.layout.is_group_leader:
        path = attack_file(ctx, run, rnd, None if training else res.name)
        path.parent.mkdir(parents=True, exist_ok=True)

        def write(tmp: Path) -> None:
            with h5py.File(tmp, "w") as f:
                f.attrs["name"] = res.name
                for k, v in attack_arrays(res).items():
                    f.create_dataset(k.rsplit("/", 1)[-1], data=v)

        _atomic_write(path, write)
        state_file(ctx, run, rnd, None if training else res.name).unlink(missing_ok=True)  # no longer needed
    ctx.layout.group.barrier()  # kept before any rank goes on


def load_attack(ctx: SweepContext, run: RunSpec, rnd: int, name: str, training: bool = False
                ) -> AttackResult | None:
    """A result kept by an earlier attempt of this round (collective over the group), or None."""
    lay = ctx.layout
    found = None
    if lay.is_group_leader:
        path = attack_file(ctx, run, rnd, None if training else name)
        if path.is_file():
            with h5py.File(path, "r") as f:
                if f.attrs.get("name") == name:
                    found = {k: f[k][()] for k in f}
    found = lay.group.bcast(found)
    if found is None:
        return None
    toks = found[S.ATTACK_TOKENS]
    return AttackResult(
        name=name, asr=found[S.ASR], correct_before=found[S.CORRECT_BEFORE].astype(bool),
        first_success=found[S.FIRST_SUCCESS], tokens=[row[row >= 0] for row in toks],
        texts=decode_text(found[S.ATTACK_TEXT]), example_index=found[S.EXAMPLE_INDEX],
        flops_nominal=found[S.ATTACK_FLOPS_NOMINAL], flops_actual=found[S.ATTACK_FLOPS_ACTUAL],
        wall_time=float(found[S.ATTACK_WALL_TIME]), final_loss=found[S.FINAL_LOSS],
        asr_current=found[S.ASR_CURRENT], early_stop=bool(found[S.EARLY_STOP]))
