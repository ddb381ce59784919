"""The sweep under `parallel.schedule: queue`: groups take work from a queue and commit it alone.

Each group leader takes the next runnable item (sweep/queue.py) and tells its group; the group computes it
and commits its record at once, alone (the commit is collective over the group only, and commits of
different groups follow one another under a lock). No rank waits for another group except when nothing is
runnable yet: it then sleeps and asks again. Only the end of the sweep is a barrier across all groups,
where world rank 0 commits the attempt's provenance.

What each item computes is what the round-by-round driver (sweep/driver.py) computes for it: a run's round
(sweep/round.py), and the cross-run items of sweep/queue_items.py (a transfer column, from the run's model and
the other runs' committed strings; a round's transfer matrix; a seed's ensemble). So the stored values are the
same, whichever group took which item and in whatever order.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from contextlib import contextmanager

from hpcrobust import savepoint
from hpcrobust.log import log, quiet
from hpcrobust.models.loading import count_parameters
from hpcrobust.parallel.collectives import broadcast_from_root
from hpcrobust.store import schema as S
from hpcrobust.store.results import TRANSFER_KEY
from hpcrobust.sweep import queue_items
from hpcrobust.sweep.context import SweepContext
from hpcrobust.sweep.plan import RunSpec
from hpcrobust.sweep.provenance import Attempt
from hpcrobust.sweep.queue import ENSEMBLE, MATRIX, ROUND, TRANSFER, Item, QueuePlan, WorkQueue
from hpcrobust.sweep.queue_items import Outcome
from hpcrobust.sweep.round import record, run_round
from hpcrobust.sweep.shared import random_token_tables, release_models, transfer_spans

POLL_S = (0.05, 0.5)  # first and longest wait between two looks at the queue (a flock and a small JSON file)


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
            if queue_items.column_file(ctx, rnd, ctx.plan.runs[i].key).is_file() or Item(MATRIX, rnd) in done:
                done.add(Item(TRANSFER, rnd, i))
    return done


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
        out = do_item(ctx, queue, item)
        if item.kind == ROUND:
            ctx.hooks.fire("runs_done", ctx, item.rnd)
        with commit_lock(ctx):
            ctx.results.commit(lay.group, header, out.records,
                               on_step=lambda step, r=item.rnd: ctx.hooks.fire("commit_step", ctx, r, step))
        if out.column is not None:  # after the commit: a column is never kept for a round that is not in the file
            queue_items.keep_column(ctx, *out.column)
        if lay.is_group_leader:
            queue.finish(item, out.done)
        n_items += 1
        ctx.hooks.fire("queue_committed", ctx)
        if item.kind == ROUND:
            n_rounds += 1
            log(f"{plan.runs[item.run].key} round {item.rnd}: committed to {ctx.results.path}",
                all_ranks=lay.is_group_leader)
        if item.kind == MATRIX or Item(MATRIX, item.rnd) in out.done:
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


def do_item(ctx: SweepContext, queue: WorkQueue, item: Item) -> Outcome:
    """Compute one item on this group: what its leader commits and what else it finished."""
    lay = ctx.layout
    if item.kind == ROUND:
        run = ctx.plan.runs[item.run]
        ctx.hooks.fire("round_started", ctx, item.rnd)
        st = run_round(ctx, run, item.rnd, random_token_tables(ctx, item.rnd, [run.seed]))
        done = lay.group.bcast(queue.done_names() if lay.is_group_leader and item.rnd in queue.plan.transfer
                               else set())
        out = queue_items.column_in_place(ctx, queue.plan, done, item, st)
        release_models([st])
        out.records[:0] = [record(ctx, st, item.rnd)] if lay.is_group_leader else []
        return out
    if item.kind == TRANSFER:
        return queue_items.reloaded_column(ctx, item)
    if item.kind == ENSEMBLE:
        runs = next(rs for rs in ensemble_members(ctx, item.rnd).values() if rs[0].index == item.run)
        return queue_items.ensemble(ctx, runs, item.rnd)
    return Outcome(queue_items.matrix(ctx, item.rnd))
