"""The work queue of `parallel.schedule: queue`: which (run, round) each group does next.

The queue is a small JSON file in the sweep's checkpoint folder, read and rewritten under an exclusive
`flock`, so groups claim work without any collective across groups. It holds what is done and what is
claimed by this attempt; a new attempt (a requeued job) rebuilds it from the results file, so claims of a
killed job are never waited for.

Items:
    round     (run, r)     runnable once the run's round r-1 is done
    transfer  (run, r)     the run's round-r model scores every other run's round-r strings (its column of
                           the transfer matrix); runnable once every run it needs has round r done
    matrix    (r)          assembles and commits round r's transfer matrix; runnable once every column is done
    ensemble  (run, r)     every ensemble attack of round r over the sizes of one seed (run: the seed's first
                           member), from their round-r checkpoints; runnable once every member has round r done.
                           Its results are added to the members' committed rounds (store/schema.py, Record.amend)

A group takes the runnable item it is eligible for (in the per-size layout, only its own size's runs) with
the most work ahead: matrices, transfer columns and ensembles first (they finish a round's records),
then the round of the run with the most parameter-rounds left, so the largest models start first and the
tail is short. The order changes only who computes what, never a stored value.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROUND, TRANSFER, MATRIX, ENSEMBLE = "round", "transfer", "matrix", "ensemble"
QUEUE_FILE = "queue.json"


@dataclass(frozen=True)
class Item:
    kind: str
    rnd: int
    run: int = -1  # run index (not for a matrix)

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.run}:{self.rnd}"

    @classmethod
    def parse(cls, name: str) -> Item:
        kind, run, rnd = name.split(":")
        return cls(kind, int(rnd), int(run))


@dataclass
class QueuePlan:
    """What the queue needs to know about the sweep (fixed before any work; the same on every rank)."""

    last_round: dict[int, int]  # run -> its last round (capped by debug.stop_after_round)
    eligible: dict[int, frozenset[int]]  # run -> the groups that may compute it
    weight: dict[int, float]  # run -> cost of one of its rounds (parameters)
    transfer: dict[int, list[frozenset[int]]]  # round -> per attack, the runs its transfer matrix spans
    ensemble: dict[int, list[frozenset[int]]] = field(default_factory=dict)  # round -> per seed, the sizes its
    # ensemble attacks join

    def items(self) -> list[Item]:
        out = [Item(ROUND, r, i) for i, last in self.last_round.items() for r in range(last + 1)]
        for rnd, spans in self.transfer.items():
            targets = sorted(set().union(*spans)) if spans else []
            out += [Item(TRANSFER, rnd, i) for i in targets]
            out += [Item(MATRIX, rnd)] if targets else []
        for rnd, groups in self.ensemble.items():
            out += [Item(ENSEMBLE, rnd, min(g)) for g in groups]
        return out

    def members(self, item: Item) -> frozenset[int]:
        """The runs an ensemble item joins."""
        return next(g for g in self.ensemble[item.rnd] if min(g) == item.run)

    def needs(self, item: Item) -> list[Item]:
        if item.kind == ROUND:
            return [Item(ROUND, item.rnd - 1, item.run)] if item.rnd else []
        if item.kind == ENSEMBLE:
            return [Item(ROUND, item.rnd, i) for i in sorted(self.members(item))]
        if item.kind == TRANSFER:
            runs = set().union(*(s for s in self.transfer[item.rnd] if item.run in s))
            return [Item(ROUND, item.rnd, i) for i in sorted(runs)]
        return [Item(TRANSFER, item.rnd, i) for i in sorted(set().union(*self.transfer[item.rnd]))]

    def may_take(self, item: Item, group: int) -> bool:
        return item.kind in (MATRIX, ENSEMBLE) or group in self.eligible[item.run]

    def priority(self, item: Item) -> tuple:
        if item.kind != ROUND:
            return (0 if item.kind == MATRIX else 1, item.rnd, item.run)
        left = (self.last_round[item.run] - item.rnd + 1) * self.weight[item.run]
        return (2, -left, item.run)


class WorkQueue:
    """The claim file; only group leaders touch it."""

    def __init__(self, folder: Path, plan: QueuePlan) -> None:
        self.path = folder / QUEUE_FILE
        self.plan = plan
        self.all = plan.items()

    @contextmanager
    def _locked(self) -> Iterator[dict]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(QUEUE_FILE + ".lock"), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state = json.loads(self.path.read_text()) if self.path.is_file() else {}
                before = json.dumps(state, sort_keys=True)
                yield state
                if json.dumps(state, sort_keys=True) != before:
                    tmp = self.path.with_name(QUEUE_FILE + ".tmp")
                    tmp.write_text(json.dumps(state, sort_keys=True))
                    os.replace(tmp, self.path)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def start(self, attempt: int, done: set[Item]) -> None:
        """World rank 0, before any group takes work: what earlier attempts finished; no claims."""
        with self._locked() as state:
            state.clear()
            state.update(attempt=attempt, done=sorted(i.name for i in done if i in set(self.all)), claims={})

    def take(self, group: int) -> Item | None | bool:
        """The next item for `group` (now claimed by it); False: nothing runnable yet; None: all done."""
        with self._locked() as state:
            done, claims = set(state["done"]), state["claims"]
            left = [i for i in self.all if i.name not in done]
            if not left:
                return None
            ready = [i for i in left if i.name not in claims and self.plan.may_take(i, group)
                     and all(n.name in done for n in self.plan.needs(i))]
            if not ready:
                return False
            item = min(ready, key=self.plan.priority)
            claims[item.name] = group
            return item

    def finish(self, item: Item, also: list[Item] | tuple = ()) -> None:
        """`item` is done, with `also` (items its group finished on the way: a transfer column, a matrix)."""
        with self._locked() as state:
            state["claims"].pop(item.name, None)
            state["done"] = sorted(set(state["done"]) | {item.name} | {i.name for i in also})

    def done_names(self) -> set[str]:
        with self._locked() as state:
            return set(state.get("done", []))

    def counts(self) -> tuple[int, int]:
        """(round items done, round items in all), for a progress bar."""
        with self._locked() as state:
            done = {Item.parse(n) for n in state.get("done", [])}
        rounds = [i for i in self.all if i.kind == ROUND]
        return sum(i in done for i in rounds), len(rounds)
