"""What would go wrong hours into a job, said before it is submitted, each with its fix.

Warnings: a size that does not fit its device, a round longer than the time limit (it is cut, and goes on across
requeues from the training steps and attack states it keeps), a sweep that needs more requeues than allowed, ranks
that get no run, attack types the plan cannot count. Notes: what the numbers assume.
"""

from __future__ import annotations

import math

from hpcrobust.config import SweepConfig
from hpcrobust.parallel.sizes import is_per_size, size_ranks
from hpcrobust.planner.costs import RunPlan
from hpcrobust.planner.memory import MAX_CACHED_EXAMPLES, GiB
from hpcrobust.planner.result import Plan


def gib(x: float) -> str:
    return f"{x / GiB:.1f} GiB" if x >= 0.1 * GiB else f"{x / 1024 ** 2:.1f} MiB"


def duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def memory_warnings(cfg: SweepConfig, plan: Plan) -> list[str]:
    out = []
    usable = plan.device.usable_bytes()
    ens = [a.name for a in cfg.attacks if a.ensemble]
    if ens and cfg.parallel.schedule == "queue" and usable and len(plan.sizes) > 1:
        # the queue's ensemble item loads every size of a seed on one group (sweep/queue_driver.py)
        held = (sum(s.memory.weights for s in plan.sizes)
                + max(s.memory.scoring_peak - s.memory.weights for s in plan.sizes))
        if held > usable:
            out.append(f"ensemble {', '.join(ens)} under parallel.schedule queue: one rank holds every size of a seed"
                       f" at once ({gib(held)} with the largest scoring), {plan.device.name} has {gib(usable)}"
                       f" usable; fix: parallel.schedule=rounds (each group holds only its own runs' models)")
    for s in plan.sizes:
        if s.fits is not False:
            continue
        mem = s.memory
        what = "training" if mem.train_peak >= mem.scoring_peak else f"scoring ({mem.scoring_what})"
        fixes = []
        if mem.train_peak > usable:
            if mem.activations > 0.25 * mem.train_peak:
                fixes.append(f"a smaller finetune.micro_batch_size (activations {gib(mem.activations)} at"
                             f" {cfg.finetune.micro_batch_size})")
            if cfg.finetune.optimizer == "adamw" or cfg.advtrain.optimizer == "adamw":
                fixes.append(f"optimizer adafactor (AdamW state {gib(mem.optimizer)})")
            if s.dtype == "float32" and mem.activations > 0.25 * mem.train_peak:
                fixes.append("torch_dtype bfloat16 (halves activations; weights, gradients and optimizer state stay"
                             " float32)")
            if mem.train_peak_checkpointed <= usable < mem.train_peak:
                fixes.append(f"gradient_checkpointing: true for this size ({gib(mem.train_peak_checkpointed)})")
            if mem.weights + mem.gradients + mem.optimizer > usable:
                key = "models.N.ranks" if is_per_size(cfg.models) else "parallel.ranks_per_group"
                fixes.append(f"a larger GPU, or more ranks per group ({key})" if s.sharded else
                             f"a larger GPU, or sharding the model (parallel.shard=true with {key}"
                             " k: weights, gradients and optimizer state 1/k per rank)")
        else:
            fixes.append(f"a smaller parallel.score_chunk (one chunk: {gib(mem.chunk)}) or fewer cached prefixes")
        out.append(f"{s.label} does not fit: {what} needs {gib(mem.peak)} per rank, {plan.device.name} has"
                   f" {gib(usable)} usable; fixes: {'; '.join(fixes)}")
    return out


def segments(round_s: list[float], limit: float) -> int:
    """Jobs (the first and its requeues) needed when each may run `limit` seconds, counted as if a round that does
    not fit in what is left started again in the next job (an upper bound: a cut round goes on from the training
    steps and attack states it kept)."""
    jobs, left = 1, limit
    for r in round_s:
        if r > left:
            jobs, left = jobs + 1, limit
        left -= r
    return jobs


def time_warnings(cfg: SweepConfig, plan: Plan) -> tuple[list[str], list[str]]:
    out, notes = [], []
    limit = plan.time_limit_s
    usable = limit - cfg.launch.slurm_signal_delay_s  # USR2 comes this long before the limit
    g = cfg.parallel.ranks_per_group
    per_size = is_per_size(cfg.models)
    more = ("more ranks per run (models.N.ranks of the slow size)" if per_size else
            f"more ranks per run (parallel.ranks_per_group={2 * g} with launch.tasks_per_node to match)")
    for j in plan.jobs:
        name = "" if j.label == "job" else f" ({j.label})"
        worst = max(range(len(j.round_s)), key=lambda k: j.round_s[k])
        if j.round_s[worst] > usable:
            need = math.ceil(j.wall_s / usable) - 1  # a cut round goes on from what it kept: little is lost
            count = (f"about {need} requeues, more than launch.max_requeues {plan.max_requeues} (raise it)"
                     if need > plan.max_requeues else f"about {need} requeue(s)")
            out.append(f"round {worst}{name} takes {duration(j.round_s[worst])}, longer than the time limit"
                       f" {duration(limit)}: it is cut, and each requeued job goes on inside it from the training"
                       f" step or attack step it kept last (at most launch.save_every_min"
                       f" {cfg.launch.save_every_min:g} min old, or saved on USR2), {count}; fixes: {more}, a"
                       f" longer launch.timeout_min, or fewer attacked examples or iterations per round")
        elif j.wall_s > usable:
            # queue: every run's round is committed on its own and a cut one goes on from what it kept
            need = segments(j.round_s, usable) - 1 if j.schedule == "rounds" else math.ceil(j.wall_s / usable) - 1
            if need <= plan.max_requeues:
                notes.append(f"the job{name} runs past the time limit: about {need} requeue(s)"
                             f" (launch.max_requeues {plan.max_requeues}), each going on from what the round it cut"
                             f" kept")
            else:
                out.append(f"the job{name} needs about {need} requeues ({duration(j.wall_s)} at a limit of"
                           f" {duration(limit)}) but launch.max_requeues is {plan.max_requeues}; raise it, or the"
                           f" time limit, or use launch.array_over=seeds")
        idle = sum(1 for grp in j.runs_by_group if not grp)
        if idle and per_size:
            out.append(f"{idle} of {j.groups} group(s){name} get no run ({j.shape} for"
                       f" {sum(map(len, j.runs_by_group))} runs); fewer models.N.groups would free them")
        elif idle:
            out.append(f"{idle} of {j.groups} group(s){name} get no run (only {sum(map(len, j.runs_by_group))} runs"
                       f" for {j.groups} groups of {g} rank(s)); fewer launch.tasks_per_node, a larger"
                       f" parallel.ranks_per_group, or launch.array_over=none would use them")
    return out, notes


def warnings_for(cfg: SweepConfig, plan: Plan, runs: dict[str, RunPlan]) -> tuple[list[str], list[str]]:
    timing, notes = time_warnings(cfg, plan)
    warns = memory_warnings(cfg, plan) + timing
    first = next(iter(runs.values()))
    for rr in first.rounds:  # every round: an evaluation attack may run in later rounds only
        for p in rr.phases:
            if p.note.startswith("no FLOP model") and p.note not in warns:
                warns.append(f"{p.name}: {p.note}")
    if plan.device.gpu and not cfg.launch.gpus_per_node:
        notes.append("launch.gpus_per_node is 0: `submit` would ask SLURM for no GPU; times are for"
                     f" {plan.device.name} as stated")
    ens = [a.name for a in cfg.attacks if a.ensemble]
    if ens:
        notes.append(f"ensemble {', '.join(ens)}: every size scores every size's proposals for every example (an"
                     " upper bound: a size stops proposing once the example no longer needs it)")
    stops = [a.name for a in cfg.attacks if getattr(a.params, "early_stop", False)]
    if stops:
        notes.append(f"upper bounds for {', '.join(stops)}: early_stop: true stops an example at its first"
                     " success")
    if any(a.type == "gcg" for a in [*cfg.attacks, *cfg.train_attacks]):
        counted = all(rp.tokens.tokenizer is not None for rp in runs.values())
        replay = ("GCG candidates are counted at the share that passes the decode-then-encode filter, replayed"
                  " with the tokenizer")
        if any(a.type == "gcg" and not a.params.ascii_only for a in [*cfg.attacks, *cfg.train_attacks]):
            replay += (" on random swaps (with ascii_only: false the gradient's choice of tokens moves the share:"
                       " within about 25% on the tiny family's byte-level vocabulary)")
        notes.append(replay if counted else "GCG is counted at its full search_width where no tokenizer"
                     " is at hand (an upper bound: the decode-then-encode filter only drops candidates)")
    fewest = min(size_ranks(m, cfg.parallel.ranks_per_group) for m in cfg.models)
    per_rank = max((math.ceil(a.n_examples / fewest) for a in cfg.attacks), default=0)
    if per_rank > MAX_CACHED_EXAMPLES:
        notes.append(f"a rank leads up to {per_rank} attacked examples but keeps {MAX_CACHED_EXAMPLES} prefix"
                     " caches: evicted prefixes are recomputed every iteration (real work the FLOP counts leave"
                     " out); more ranks per group avoid it")
    notes.append(plan.accuracy_how)
    if not plan.utilisation_how.startswith("calibrated"):
        notes.append("each round also loads and saves its model (checkpoint) at 1 GB/s; the process's start-up is"
                     " not included (--calibrate measures both)")
    return warns, notes
