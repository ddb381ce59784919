"""An attack's state at a step boundary, kept on disk so that a killed or requeued run goes on inside the attack.

What is kept is everything the steps after it depend on: the step reached, every example's tokens, flags, first
success and best loss, the attack's own per-example state (`Attack.state_arrays`: GCG's buffer, BEAST's beams),
the per-iteration flips recorded so far, the FLOPs per iteration summed over the group's ranks, and the wall time
so far. Random streams are keyed by (seed, run, round, attack, example, step), so the step reached is the
position of every stream: the steps after a resume draw what an uninterrupted run draws.

What is not state is rebuilt on resume without being counted (prefix caches, BEAST's sampler caches): their
FLOPs are in the kept FLOPs already. The kept FLOPs go to the group leader's counts and zeros to the other ranks,
so the group's final sum is the uninterrupted run's integers whatever the number of ranks before and after.

The file is HDF5 (no pickle): the group leader writes it (a temporary file, flushed, renamed) and reads it, and
broadcasts what it read, so every rank of a group goes on from the same state.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from hpcrobust import savepoint
from hpcrobust.log import log
from hpcrobust.models.flops import FlopCount
from hpcrobust.parallel.comm import Comm
from hpcrobust.store.writer import fsync_path

VERSION = 1
FLOP_FIELDS = ("nominal", "actual", "forward_tokens", "backward_tokens")


@dataclass
class AttackState:
    """The whole state of a lockstep attack after `step` steps (0: after the setup, iteration 0)."""

    step: int
    tokens: list[np.ndarray]
    done: np.ndarray
    first_success: np.ndarray
    best_loss: np.ndarray
    now_flipped: np.ndarray
    extra: list[dict[str, np.ndarray]]  # per example, the attack's own (Attack.state_arrays)
    hits: np.ndarray  # [n_examples, n_iterations+1]
    reached: np.ndarray  # [n_examples]
    flops: list[FlopCount]  # per iteration, summed over the group's ranks
    wall_s: float


def _ints(values: list[int]) -> np.ndarray:
    """Exact integers of any size (FLOPs can pass int64 at scale) as decimal strings."""
    return np.array([str(int(v)).encode() for v in values], dtype="S")


def _write(path: Path, check: str, s: AttackState) -> None:
    n = len(s.tokens)
    width = max([len(t) for t in s.tokens], default=0)
    toks = np.full((n, width), -1, dtype=np.int64)
    for i, t in enumerate(s.tokens):
        toks[i, :len(t)] = t
    with h5py.File(path, "w") as f:
        f.attrs.update(version=VERSION, check=check, step=s.step, wall_s=s.wall_s)
        f["tokens"] = toks
        f["token_len"] = np.array([len(t) for t in s.tokens], dtype=np.int64)
        for k in ("done", "first_success", "best_loss", "now_flipped", "hits", "reached"):
            f[k] = getattr(s, k)
        f["flops_nominal"] = _ints([c.nominal for c in s.flops])
        f["flops_actual"] = _ints([c.actual for c in s.flops])
        f["flops_forward_tokens"] = _ints([c.forward_tokens for c in s.flops])
        f["flops_backward_tokens"] = _ints([c.backward_tokens for c in s.flops])
        ex = f.create_group("extra")
        for i, arrays in enumerate(s.extra):
            g = ex.create_group(str(i))
            for k, v in arrays.items():
                g[k] = np.asarray(v)


def _read(path: Path, check: str) -> AttackState | None:
    with h5py.File(path, "r") as f:
        if f.attrs.get("version") != VERSION or f.attrs.get("check") != check:
            return None
        toks, lens = f["tokens"][()], f["token_len"][()]
        cols = [[int(v) for v in f[f"flops_{k}"][()]] for k in ("nominal", "actual", "forward_tokens",
                                                                  "backward_tokens")]
        ex = f["extra"]
        return AttackState(
            step=int(f.attrs["step"]), tokens=[toks[i, :lens[i]].copy() for i in range(len(lens))],
            done=f["done"][()], first_success=f["first_success"][()], best_loss=f["best_loss"][()],
            now_flipped=f["now_flipped"][()], hits=f["hits"][()], reached=f["reached"][()],
            extra=[{k: ex[str(i)][k][()] for k in ex[str(i)]} for i in range(len(lens))],
            flops=[FlopCount(*c) for c in zip(*cols, strict=True)], wall_s=float(f.attrs["wall_s"]))


def _write_flat(path: Path, check: str, step: int, wall_s: float, arrays: dict[str, np.ndarray]) -> None:
    with h5py.File(path, "w") as f:
        f.attrs.update(version=VERSION, check=check, step=step, wall_s=wall_s, flat=1)
        for k, v in arrays.items():
            f[k] = np.asarray(v)


def _read_flat(path: Path, check: str) -> tuple[int, float, dict[str, np.ndarray]] | None:
    with h5py.File(path, "r") as f:
        if f.attrs.get("version") != VERSION or f.attrs.get("check") != check or f.attrs.get("flat") != 1:
            return None
        return int(f.attrs["step"]), float(f.attrs["wall_s"]), {k: f[k][()] for k in f}


def flops_arrays(counts: list[FlopCount]) -> np.ndarray:
    """FLOP counts per iteration as exact decimal strings, [4, n_iterations+1] (nominal, actual, tokens)."""
    return np.stack([_ints([getattr(c, k) for c in counts]) for k in FLOP_FIELDS])


def flops_from_arrays(a: np.ndarray) -> list[FlopCount]:
    return [FlopCount(*(int(v) for v in col)) for col in np.asarray(a).T]


@dataclass
class AttackSaver:
    """Where (`path`) and how often (`every_s`; 0 = after every step) an attack keeps its state; `label` names
    the attack in the log (`<run> round R: <attack>`)."""

    path: Path
    every_s: float
    group: Comm
    label: str
    saves: int = 0  # made by this process (tests, logs)
    resumed_at: int = -1  # the step this attack went on from (-1: from the start)
    clock: savepoint.SaveClock = field(init=False)

    def __post_init__(self) -> None:
        self.clock = savepoint.SaveClock(self.every_s)

    def due(self) -> bool:
        """Whether to save after this step (savepoint.SaveClock); the leader decides for the whole group."""
        return bool(self.group.bcast(self.clock.due()))

    def save(self, check: str, state: AttackState) -> None:
        """Collective over the group (every rank holds the same state but its own FLOPs; `state.flops` must be
        the group's sum already); the leader writes."""
        self._commit(lambda tmp: _write(tmp, check, state))

    def save_arrays(self, check: str, step: int, wall_s: float, arrays: dict[str, np.ndarray]) -> None:
        """The same for an attack that is not lockstep (ensemble GCG): named arrays, the same on every rank."""
        self._commit(lambda tmp: _write_flat(tmp, check, step, wall_s, arrays))

    def _commit(self, write) -> None:
        if self.group.rank == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            write(tmp)
            fsync_path(tmp)
            os.replace(tmp, self.path)
            fsync_path(self.path.parent)
        self.group.barrier()
        self.saves += 1
        if self.clock.ticked():
            log(f"{self.label}: kept its state (a save was requested)", all_ranks=self.group.rank == 0)

    def load(self, check: str) -> AttackState | None:
        """The kept state when it belongs to this attack (`check`), else None (collective: the leader reads)."""
        return self._fetch(lambda: _read(self.path, check))

    def load_arrays(self, check: str) -> tuple[int, float, dict[str, np.ndarray]] | None:
        """What `save_arrays` kept for this attack (step, wall time, arrays), else None (collective)."""
        return self._fetch(lambda: _read_flat(self.path, check))

    def _fetch(self, read):
        found = None
        if self.group.rank == 0 and self.path.is_file():
            try:
                found = read()
            except (OSError, KeyError, ValueError):
                found = None  # unreadable (not ours, or another version's layout): start afresh
        return self.group.bcast(found)

    def clear(self) -> None:
        if self.group.rank == 0:
            self.path.unlink(missing_ok=True)
