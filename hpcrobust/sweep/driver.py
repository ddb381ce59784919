"""The sweep loop of parallel.schedule=rounds: every run through every round, committed round by round (the
default schedule, queue, is sweep/queue_driver.py).

Rounds are the outer loop. In round r every group works through its runs (sweep/round.py), the
ranks of different runs meet for the shared phases (sweep/shared.py), then all ranks commit round r
together, with this attempt's provenance (sweep/provenance.py). A round that is already committed is
skipped, so a rerun resumes where a sweep stopped.
"""

from __future__ import annotations

from hpcrobust.log import log, quiet
from hpcrobust.parallel.collectives import broadcast_from_root
from hpcrobust.sweep.context import SweepContext
from hpcrobust.sweep.provenance import Attempt
from hpcrobust.sweep.queue_driver import drive_queue
from hpcrobust.sweep.round import record, run_round
from hpcrobust.sweep.shared import (
    ensemble_phase,
    models_needed_after_runs,
    release_models,
    share_random_tokens,
    transfer_phase,
)


def drive(ctx: SweepContext) -> None:
    if ctx.cfg.parallel.schedule == "queue":
        drive_queue(ctx)
        return
    lay, plan = ctx.layout, ctx.plan
    done, attempt_no = broadcast_from_root(lay.world, (ctx.results.committed_rounds(), ctx.results.next_attempt())
                                           if lay.is_root else None)
    ctx.attempt = Attempt.begin(lay, attempt_no, ctx.started)
    bar = None
    if lay.is_root and not quiet():
        from tqdm import tqdm

        total = sum(plan.n_rounds(r) + 1 for r in plan.runs)
        already = sum(len(done.get(r.key, ())) for r in plan.runs)
        bar = tqdm(total=total, initial=already, desc="sweep", unit="round", dynamic_ncols=True)
    header = {**plan.header(), **ctx.attempt.header()}
    ctx.hooks.fire("sweep_started", ctx)
    for rnd in range(plan.max_round + 1):
        active = plan.active(rnd)
        if all(rnd in done.get(r.key, set()) for r in active):
            continue  # committed (with its transfer matrix) in an earlier attempt
        ctx.hooks.fire("round_started", ctx, rnd)
        tables = share_random_tokens(ctx, rnd)
        keep = models_needed_after_runs(ctx)
        held = {}
        for i in lay.runs_of_group():
            if plan.runs[i] in active:
                held[i] = run_round(ctx, plan.runs[i], rnd, tables)
                if not keep:
                    release_models([held[i]])
        ctx.hooks.fire("runs_done", ctx, rnd)
        ensemble_phase(ctx, rnd, active, held)
        transfer = transfer_phase(ctx, rnd, active, held)
        release_models(held.values())  # before the commit and the next round's models
        mine = [record(ctx, st, rnd) for st in held.values()] if lay.is_group_leader else []
        mine += [transfer] if transfer else []
        mine += [ctx.attempt.record(len(active))] if lay.is_root else []  # its provenance, up to this commit
        n = ctx.results.commit(lay.world, header, mine,
                               on_step=lambda step, r=rnd: ctx.hooks.fire("commit_step", ctx, r, step))
        if bar is not None:
            bar.update(len(active))
        if n:
            log(f"round {rnd}: committed {len(active)} run(s) to {ctx.results.path}")
        ctx.hooks.fire("round_committed", ctx, rnd, n)
    if bar is not None:
        bar.close()
    ctx.hooks.fire("sweep_finished", ctx)
