"""The sweep under `parallel.schedule: queue`: groups take work from a queue and commit it alone.

Each group leader takes the next runnable item (sweep/queue.py) and tells its group; the group computes it
and commits its record at once, alone (the commit is collective over the group only, and commits of
different groups follow one another under a lock). No rank waits for another group except when nothing is
runnable yet: it then sleeps and asks again. Only the end of the sweep is a barrier across all groups,
where world rank 0 commits the attempt's provenance.

What each item computes is what the round-by-round driver (sweep/driver.py) computes for it: a run's round
(sweep/round.py), one run's column of a transfer matrix, from its round's checkpoint and the other runs'
committed strings, or a round's transfer matrix from its columns. So the stored values are the same, whichever
group took which item and in whatever order.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from hpcrobust import savepoint
from hpcrobust.attacks.transfer import Source, Target, transfer_counts
from hpcrobust.log import log, quiet
from hpcrobust.models.loading import count_parameters
from hpcrobust.parallel.collectives import broadcast_from_root
from hpcrobust.store import schema as S
from hpcrobust.store.results import TRANSFER_KEY
from hpcrobust.store.schema import Record
from hpcrobust.store.writer import fsync_path
from hpcrobust.sweep import checkpoint
from hpcrobust.sweep.context import RoundState, SweepContext
from hpcrobust.sweep.plan import RunSpec
from hpcrobust.sweep.provenance import Attempt
from hpcrobust.sweep.queue import ENSEMBLE, MATRIX, ROUND, TRANSFER, Item, QueuePlan, WorkQueue
from hpcrobust.sweep.round import clean_accuracy, record, run_round
from hpcrobust.sweep.shared import (
    ensemble_phase,
    random_token_tables,
    release_models,
    transfer_record,
    transfer_spans,
)

POLL_S = (0.05, 2.0)  # first and longest wait between two looks at the queue


def queue_plan(ctx: SweepContext) -> QueuePlan:
    plan, lay, cfg = ctx.plan, ctx.layout, ctx.cfg
    cap = cfg.debug.stop_after_round
    last = {r.index: min(plan.n_rounds(r), cap) if cap >= 0 else plan.n_rounds(r) for r in plan.runs}
    if lay.sizes is None:  # equal groups: any group can take any run
        eligible = {r.index: frozenset(range(lay.n_groups)) for r in plan.runs}
    else:  # per size: the groups dealt this size's runs
        eligible = {r.index: frozenset(lay.group_of_run[o.index] for o in plan.runs if o.model_index == r.model_index)
                    for r in plan.runs}
    weight = {r.index: float(count_parameters(cfg.models[r.model_index], cfg.family)) for r in plan.runs}
    transfer = {}
    for rnd in range(max(last.values()) + 1):
        spans = [frozenset(r.index for r in runs) for _, runs in transfer_spans(ctx, rnd)
                 if all(rnd <= last[r.index] for r in runs)]
        if spans:
            transfer[rnd] = spans
    ensemble = {}
    for rnd in range(max(last.values()) + 1):
        groups = [frozenset(r.index for r in runs) for runs in ensemble_members(ctx, rnd).values()]
        groups = [g for g in groups if all(rnd <= last[i] for i in g)]
        if groups:
            ensemble[rnd] = groups
    return QueuePlan(last, eligible, weight, transfer, ensemble)


def ensemble_members(ctx: SweepContext, rnd: int) -> dict[int, list[RunSpec]]:
    """{seed: the runs any ensemble attack of round `rnd` joins}, in run order (seeds without one left out)."""
    active, out = ctx.plan.active(rnd), {}
    for seed in ctx.cfg.seeds:
        runs = {r.index: r for a in ctx.cfg.attacks if a.ensemble
                for r in ctx.plan.evaluated(a, [r for r in active if r.seed == seed], rnd)}
        if runs:
            out[seed] = [runs[i] for i in sorted(runs)]
    return out


def _ensemble_done(ctx: SweepContext, rnd: int, runs: list[RunSpec]) -> bool:
    """Whether an earlier attempt added every ensemble attack's arrays to every member's committed round."""
    with ctx.results.open() as f:
        for a in ctx.cfg.attacks:
            if not a.ensemble:
                continue
            for r in ctx.plan.evaluated(a, runs, rnd):
                if S.attack_path(a.name, S.ASR) not in f.get(S.round_path(r.key, rnd), {}):
                    return False
    return True


def done_items(ctx: SweepContext, committed: dict[str, set[int]], qp: QueuePlan) -> set[Item]:
    """What earlier attempts finished: committed rounds and matrices, and the transfer columns they kept."""
    done = {Item(ROUND, rnd, r.index) for r in ctx.plan.runs for rnd in committed.get(r.key, ())}
    for rnd in committed.get(TRANSFER_KEY, ()):
        done.add(Item(MATRIX, rnd))
    for rnd, groups in qp.ensemble.items():
        for g in groups:
            if all(rnd in committed.get(ctx.plan.runs[i].key, ()) for i in g) and \
                    _ensemble_done(ctx, rnd, [ctx.plan.runs[i] for i in sorted(g)]):
                done.add(Item(ENSEMBLE, rnd, min(g)))
    for rnd, spans in qp.transfer.items():
        for i in set().union(*spans):
            if column_file(ctx, rnd, ctx.plan.runs[i].key).is_file() or Item(MATRIX, rnd) in done:
                done.add(Item(TRANSFER, rnd, i))
    return done


def column_file(ctx: SweepContext, rnd: int, run_key: str) -> Path:
    return ctx.results.checkpoint_root / "transfer" / S.round_name(rnd) / f"{run_key}.json"


@contextmanager
def commit_lock(ctx: SweepContext) -> Iterator[None]:
    """Commits of different groups, one after another (the group leader holds it; its group waits)."""
    lay = ctx.layout
    fh = None
    if lay.is_group_leader:
        fh = open(ctx.results.path.with_name(ctx.results.path.name + ".queue-commit.lock"), "a+")
        fcntl.flock(fh, fcntl.LOCK_EX)
    lay.group.barrier()
    try:
        yield
    finally:
        lay.group.barrier()
        if fh is not None:
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()


def drive_queue(ctx: SweepContext) -> None:
    lay, plan = ctx.layout, ctx.plan
    committed, attempt_no = broadcast_from_root(lay.world, (ctx.results.committed_rounds(),
                                                            ctx.results.next_attempt()) if lay.is_root else None)
    ctx.attempt = Attempt.begin(lay, attempt_no, ctx.started)
    qp = queue_plan(ctx)
    queue = WorkQueue(ctx.results.checkpoint_root, qp)
    if lay.is_root:
        queue.start(attempt_no, done_items(ctx, committed, qp))
    lay.world.barrier()
    header = {**plan.header(), **ctx.attempt.header()}
    ctx.hooks.fire("sweep_started", ctx)
    bar = None
    if lay.is_root and not quiet():
        from tqdm import tqdm

        # every planned run-round (debug.stop_after_round caps the queue, not the sweep)
        bar = tqdm(total=sum(plan.n_rounds(r) + 1 for r in plan.runs), initial=queue.counts()[0], desc="sweep",
                   unit="round", dynamic_ncols=True)
    n_rounds, n_items, wait = 0, 0, POLL_S[0]
    while True:
        if lay.group.bcast(savepoint.requested() if lay.is_group_leader else None):
            stop_taking_work(ctx)
        item = lay.group.bcast(queue.take(lay.group_index) if lay.is_group_leader else None)
        if item is None:
            break
        if item is False:  # nothing runnable for this group yet: sleep together, then look again
            ctx.hooks.fire("queue_committed", ctx)
            time.sleep(wait)
            wait = min(2 * wait, POLL_S[1])
            continue
        wait = POLL_S[0]
        mine = do_item(ctx, item)
        if item.kind == ROUND:
            ctx.hooks.fire("runs_done", ctx, item.rnd)
        with commit_lock(ctx):
            ctx.results.commit(lay.group, header, mine,
                               on_step=lambda step, r=item.rnd: ctx.hooks.fire("commit_step", ctx, r, step))
        if lay.is_group_leader:
            queue.finish(item)
        n_items += 1
        ctx.hooks.fire("queue_committed", ctx)
        if item.kind == ROUND:
            n_rounds += 1
            log(f"{plan.runs[item.run].key} round {item.rnd}: committed to {ctx.results.path}",
                all_ranks=lay.is_group_leader)
        elif item.kind == MATRIX:
            log(f"round {item.rnd}: transfer matrix committed", all_ranks=lay.is_group_leader)
        elif item.kind == ENSEMBLE:
            log(f"{plan.runs[item.run].key} round {item.rnd}: ensemble attacks of seed {plan.runs[item.run].seed}"
                " committed", all_ranks=lay.is_group_leader)
        if bar is not None:
            bar.update(queue.counts()[0] - bar.n)
    if bar is not None:
        bar.close()
    total, worked = (sum(x) for x in zip(*lay.world.allgather((n_rounds, n_items) if lay.is_group_leader
                                                               else (0, 0)), strict=True))
    if worked:  # a rerun of a finished sweep leaves the file as it was
        ctx.results.commit(lay.world, header, [ctx.attempt.record(total)] if lay.is_root else [])
    ctx.hooks.fire("queue_committed", ctx)
    if ctx.cfg.debug.stop_after_round >= 0 and any(ctx.plan.n_rounds(r) > ctx.cfg.debug.stop_after_round
                                                   for r in plan.runs):
        raise SystemExit(3)  # every rank: the queue stopped after debug.stop_after_round
    ctx.hooks.fire("sweep_finished", ctx)


def stop_taking_work(ctx: SweepContext) -> None:
    """A save was requested (SLURM's USR2): what this group did is committed or kept, so it takes nothing more
    and counts as saved; world rank 0 requeues the job once every group has saved (launch/safestop.py)."""
    if ctx.layout.is_group_leader:
        savepoint.saved()
    log(f"group {ctx.layout.group_index}: a save was requested; its work is committed or kept, it takes no more"
        " items and waits for the requeue", all_ranks=ctx.layout.is_group_leader)
    while True:
        time.sleep(1.0)  # the requeue ends the job; signal handlers run between the sleeps


def do_item(ctx: SweepContext, item: Item) -> list[Record]:
    """Compute one item on this group; the records its leader brings to the commit."""
    lead = ctx.layout.is_group_leader
    if item.kind == ROUND:
        run = ctx.plan.runs[item.run]
        ctx.hooks.fire("round_started", ctx, item.rnd)
        st = run_round(ctx, run, item.rnd, random_token_tables(ctx, item.rnd, [run.seed]))
        release_models([st])
        return [record(ctx, st, item.rnd)] if lead else []
    if item.kind == TRANSFER:
        transfer_column(ctx, item)
        return []
    if item.kind == ENSEMBLE:
        return ensemble_item(ctx, item)
    counts = {}
    spans = transfer_spans(ctx, item.rnd)
    if lead:
        for _, runs in spans:
            for r in runs:
                for k, v in json.loads(column_file(ctx, item.rnd, r.key).read_text()).items():
                    name, s = k.split("\t")
                    counts[(name, s, r.key)] = tuple(v)
    rec = transfer_record(item.rnd, spans, counts) if lead else None
    return [rec] if rec is not None else []


def _sources(ctx: SweepContext, rnd: int, attack: str, keys: list[str]) -> list[Source]:
    """The runs' committed final strings of `attack` in round `rnd` (what the round-by-round driver gathers)."""
    out = []
    with ctx.results.open() as f:
        for key in keys:
            g = f[S.round_path(key, rnd)]
            toks = g[S.attack_path(attack, S.ATTACK_TOKENS)][()]
            out.append(Source(key, [row[row >= 0] for row in toks],
                              g[S.attack_path(attack, S.CORRECT_BEFORE)][()].astype(bool)))
    return out


def transfer_column(ctx: SweepContext, item: Item) -> None:
    """Score every source's strings on this run's round-`rnd` model (from its checkpoint); keep the counts."""
    lay, run = ctx.layout, ctx.plan.runs[item.run]
    clf = checkpoint.load_model(ctx, run, item.rnd, trained=True)
    clf.backoff = ctx.backoff(run)
    pred, _ = clean_accuracy(ctx, clf)
    correct = pred == np.array([e.label for e in ctx.task.val])
    counts = {}
    for a, runs in transfer_spans(ctx, item.rnd):
        if run not in runs:
            continue
        sources = lay.group.bcast(_sources(ctx, item.rnd, a.name, [r.key for r in runs])
                                  if lay.is_group_leader else None)
        targets = [Target(run.index, run.key, clf, correct)] if (lay.is_group_leader or lay.shard) else []
        for (s, _), v in transfer_counts(a, sources, targets, ctx.eval_set).items():
            counts[f"{a.name}\t{s}"] = list(v)
    del clf
    release_models([])
    if lay.is_group_leader:
        path = column_file(ctx, item.rnd, run.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(counts, sort_keys=True))
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    lay.group.barrier()


def ensemble_item(ctx: SweepContext, item: Item) -> list[Record]:
    """Every ensemble attack of one seed's sizes in round `rnd`, on this group, from the sizes' round-`rnd`
    checkpoints (its leader holds every size, as world rank 0's group does in the round-by-round driver); the
    results are added to the members' committed rounds."""
    lay = ctx.layout
    runs = next(rs for rs in ensemble_members(ctx, item.rnd).values() if rs[0].index == item.run)
    labels = np.array([e.label for e in ctx.task.val])
    held = {}
    for run in runs:
        clf = checkpoint.load_model(ctx, run, item.rnd, trained=True)
        clf.backoff = ctx.backoff(run)
        pred, _ = clean_accuracy(ctx, clf)
        held[run.index] = RoundState(run, clf if lay.is_group_leader else None, pred == labels, {})
        del clf
    ensemble_phase(ctx, item.rnd, runs, held, lay.group)
    release_models(held.values())
    if not lay.is_group_leader:
        return []
    return [Record(path=S.round_path(st.run.key, item.rnd), arrays=st.arrays, amend=True) for st in held.values()]
