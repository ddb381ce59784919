"""What the work queue's cross-run items compute (sweep/queue_driver.py takes and commits them).

    transfer column (run, r)   this run's round-r model scores every spanned run's round-r strings; the counts
                               are kept as <output>.ckpt/transfer/round_RRRR/<run>.json
    matrix (r)                 round r's transfer matrices, assembled from the columns
    ensemble (run, r)          a seed's ensemble attacks, from its sizes' round-r checkpoints

A column is computed right after the run's round, with its model still in memory, when every other run the
column needs has committed that round (and the matrix with it, when that was the last column): only a column
whose sources come later reloads the round's checkpoint. The counts are the same either way.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hpcrobust.attacks.transfer import Source, Target, transfer_counts
from hpcrobust.models.classifier import Classifier
from hpcrobust.store import schema as S
from hpcrobust.store.schema import Record
from hpcrobust.store.writer import fsync_path
from hpcrobust.sweep import checkpoint
from hpcrobust.sweep.context import RoundState, SweepContext
from hpcrobust.sweep.plan import RunSpec
from hpcrobust.sweep.queue import MATRIX, TRANSFER, Item, QueuePlan
from hpcrobust.sweep.round import clean_accuracy
from hpcrobust.sweep.shared import ensemble_phase, release_models, transfer_record, transfer_spans


@dataclass
class Outcome:
    """An item's result on its group: the records its leader commits, the queue items finished with it, and a
    transfer column to keep once the commit is done."""

    records: list[Record] = field(default_factory=list)
    done: list[Item] = field(default_factory=list)
    column: tuple[int, str, dict] | None = None  # (round, run key, counts)


def column_file(ctx: SweepContext, rnd: int, run_key: str) -> Path:
    return ctx.results.checkpoint_root / "transfer" / S.round_name(rnd) / f"{run_key}.json"


def keep_column(ctx: SweepContext, rnd: int, run_key: str, counts: dict) -> None:
    """The group leader writes a column's counts atomically (the group waits)."""
    lay = ctx.layout
    if lay.is_group_leader:
        path = column_file(ctx, rnd, run_key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(counts, sort_keys=True))
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    lay.group.barrier()


def _sources(ctx: SweepContext, rnd: int, attack: str, keys: list[str]) -> dict[str, Source]:
    """The runs' committed final strings of `attack` in round `rnd` (what the round-by-round driver gathers)."""
    out = {}
    if not keys:  # a column of the run's own strings only: the file may not exist yet
        return out
    with ctx.results.open() as f:
        for key in keys:
            g = f[S.round_path(key, rnd)]
            toks = g[S.attack_path(attack, S.ATTACK_TOKENS)][()]
            out[key] = Source(key, [row[row >= 0] for row in toks],
                              g[S.attack_path(attack, S.CORRECT_BEFORE)][()].astype(bool))
    return out


def column_counts(ctx: SweepContext, rnd: int, run: RunSpec, clf: Classifier, correct: np.ndarray,
                  own: RoundState | None = None) -> dict[str, list[int]]:
    """{attack\\tsource: [flipped, evaluated]} of every source's strings on this run's model; `own`: this run's
    round still in memory (its strings are not committed yet)."""
    lay, counts = ctx.layout, {}
    for a, runs in transfer_spans(ctx, rnd):
        if run not in runs:
            continue
        sources = None
        if lay.is_group_leader:
            keys = [r.key for r in runs]
            got = _sources(ctx, rnd, a.name, [k for k in keys if own is None or k != run.key])
            if own is not None:
                res = own.results[a.name]
                got[run.key] = Source(run.key, list(res.tokens), np.asarray(res.correct_before, dtype=bool))
            sources = [got[k] for k in keys]
        sources = lay.group.bcast(sources)
        targets = [Target(run.index, run.key, clf, correct)] if (lay.is_group_leader or lay.shard) else []
        for (s, _), v in transfer_counts(a, sources, targets, ctx.eval_set).items():
            counts[f"{a.name}\t{s}"] = list(v)
    return counts


def reloaded_column(ctx: SweepContext, item: Item) -> Outcome:
    """A column whose sources came after its run's round: from the round's checkpoint."""
    run = ctx.plan.runs[item.run]
    clf = checkpoint.load_model(ctx, run, item.rnd, trained=True)
    clf.backoff = ctx.backoff(run)
    pred, _ = clean_accuracy(ctx, clf)
    counts = column_counts(ctx, item.rnd, run, clf, pred == np.array([e.label for e in ctx.task.val]))
    del clf
    release_models([])
    return Outcome(column=(item.rnd, run.key, counts))


def matrix(ctx: SweepContext, rnd: int, have: dict[str, dict] | None = None) -> list[Record]:
    """Round `rnd`'s transfer matrices from the kept columns (and `have`: columns not kept yet), on the leader."""
    if not ctx.layout.is_group_leader:
        return []
    have, counts = have or {}, {}
    spans = transfer_spans(ctx, rnd)
    for _, runs in spans:
        for r in runs:
            col = have[r.key] if r.key in have else json.loads(column_file(ctx, rnd, r.key).read_text())
            for k, v in col.items():
                name, s = k.split("\t")
                counts[(name, s, r.key)] = tuple(v)
    rec = transfer_record(rnd, spans, counts)
    return [rec] if rec is not None else []


def column_in_place(ctx: SweepContext, qp: QueuePlan, done: set[str], item: Item, st: RoundState) -> Outcome:
    """Right after `item` (a run's round): its transfer column while the model is here, when every run the column
    needs has the round done (`done`: the queue's finished items), and the matrix when it was the last column."""
    col, mat = Item(TRANSFER, item.rnd, item.run), Item(MATRIX, item.rnd)
    if item.rnd not in qp.transfer or item.run not in set().union(*qp.transfer[item.rnd]):
        return Outcome()
    if any(n.name not in done for n in qp.needs(col) if n != item):
        return Outcome()
    counts = column_counts(ctx, item.rnd, st.run, st.clf, st.correct, own=st)
    if all(n.name in done for n in qp.needs(mat) if n != col):
        return Outcome(matrix(ctx, item.rnd, {st.run.key: counts}), [col, mat], (item.rnd, st.run.key, counts))
    return Outcome(done=[col], column=(item.rnd, st.run.key, counts))


def ensemble(ctx: SweepContext, runs: list[RunSpec], rnd: int) -> Outcome:
    """Every ensemble attack of one seed's sizes in round `rnd`, on this group, from the sizes' round-`rnd`
    checkpoints (its leader holds them all at once); the results are added to the members' committed rounds."""
    lay = ctx.layout
    labels = np.array([e.label for e in ctx.task.val])
    held = {}
    for run in runs:
        clf = checkpoint.load_model(ctx, run, rnd, trained=True)
        clf.backoff = ctx.backoff(run)
        pred, _ = clean_accuracy(ctx, clf)
        held[run.index] = RoundState(run, clf if lay.is_group_leader else None, pred == labels, {})
        del clf
    ensemble_phase(ctx, rnd, runs, held, lay.group)
    release_models(held.values())
    if not lay.is_group_leader:
        return Outcome()
    return Outcome([Record(path=S.round_path(st.run.key, rnd), arrays=st.arrays, amend=True)
                    for st in held.values()])
