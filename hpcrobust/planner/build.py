"""Assemble a sweep's plan: FLOPs per phase, memory per rank, time on a device, and the job layout.

    plan_sweep(cfg, overrides, options) -> Plan

The layout is `submit`'s: one job, or one per seed or shard (`launch.array_over`); each job's world of
launch.nodes x launch.tasks_per_node ranks is cut into groups of parallel.ranks_per_group, run i goes to
group i mod n_groups (or, in the per-size layout of models.N.ranks/groups, each size's runs to its own
groups, and the job is as large as their sum), and every group finishes round r before any commits it,
so a job's round lasts as long as its busiest group's runs of that round.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from hpcrobust.attacks.base import CheckEnv
from hpcrobust.attacks.beast import sampler_model
from hpcrobust.config import SweepConfig
from hpcrobust.errors import UserError
from hpcrobust.launch.plan import plan_tasks, quote_times
from hpcrobust.parallel.sizes import describe as describe_sizes
from hpcrobust.parallel.sizes import (
    equal_groups,
    group_ranks,
    groups_of_runs,
    is_per_size,
    job_nodes,
    size_groups,
    size_ranks,
)
from hpcrobust.planner.arch import ModelArch, model_arch
from hpcrobust.planner.calibrate import Calibration
from hpcrobust.planner.checks import warnings_for
from hpcrobust.planner.costs import FORWARD, TRAIN, CostModel, Phase, RunPlan, transfer_sources
from hpcrobust.planner.devices import DEFAULT_UTILISATION, Device
from hpcrobust.planner.memory import plan_memory
from hpcrobust.planner.result import JobPlan, Plan, SizePlan
from hpcrobust.planner.schedule import barrier_schedule, queue_schedule
from hpcrobust.planner.tokens import task_tokens
from hpcrobust.sweep.checks import check_counts
from hpcrobust.sweep.plan import RunSpec, plan_runs
from hpcrobust.tasks import TaskData, load_task
from hpcrobust.training.adversarial import equal_compute_rounds

IO_BYTES_PER_S = 1e9  # loading and saving a round's checkpoint, when no calibration says otherwise


@dataclass
class Options:
    accuracy: float | None = None  # share of validation examples classified correctly (only those are attacked);
    # None: the calibration file's share for a size it holds, else 1 (an upper bound)
    utilisation: float = DEFAULT_UTILISATION
    calibration: Calibration | None = None


def accuracy_for(m: ModelArch, opts: Options) -> tuple[float, str]:
    """(share of attacked examples classified correctly, where that share comes from)."""
    if opts.accuracy is not None:
        return opts.accuracy, f"evaluation attacks assume {opts.accuracy:g} of their examples are classified" \
            " correctly (--accuracy)"
    cal = opts.calibration
    if cal is not None and m.n_params in cal.accuracy:
        return cal.accuracy[m.n_params], f"evaluation attacks assume each size's share of correctly classified" \
            f" examples measured in {cal.source} (only those are attacked; --accuracy A to override)"
    return 1.0, "evaluation attacks assume every example is classified correctly (an upper bound: only correct ones" \
        " are attacked; --accuracy A)"


def rounds_per_model(cfg: SweepConfig, archs: list[ModelArch]) -> list[int]:
    """sweep/plan.py's rule, with parameters counted from the architecture (no config.json needed)."""
    per = [cfg.advtrain.rounds] * len(cfg.models)
    if cfg.advtrain.equal_compute:
        per = equal_compute_rounds(cfg.advtrain.rounds, [a.n_params for a in archs])
    return [m.rounds if m.rounds >= 0 else r for m, r in zip(cfg.models, per, strict=True)]


class Timer:
    """Seconds of a phase on the device, with the calibrated (or default) utilisation of its kind and size."""

    def __init__(self, device: Device, opts: Options, cfg: SweepConfig, ranks: dict[str, int]) -> None:
        self.device, self.opts, self.cfg = device, opts, cfg
        self.ranks = ranks  # size label -> ranks of its group
        self.used: dict[tuple[str, str], float] = {}
        self.missing: set[str] = set()

    def utilisation(self, kind: str, m: ModelArch) -> tuple[float, float]:
        kind = TRAIN if kind == FORWARD else kind
        cal = self.opts.calibration
        found = cal.lookup(kind, m.n_params) if cal else None
        if found is None:
            if cal is not None:
                self.missing.add(kind)
            u, c = self.opts.utilisation, 2 * m.n_params * m.dtype_bytes / IO_BYTES_PER_S
        else:
            u, c = found
        self.used[(m.label, kind)] = u
        return u, c

    def phase(self, p: Phase, m: ModelArch) -> float:
        g = self.ranks[m.label]
        u, _ = self.utilisation(p.kind, m)
        share = {TRAIN: min(g, self.cfg.finetune.batch_size // self.cfg.finetune.micro_batch_size)}.get(p.kind, g)
        return p.flops.actual / (u * self.device.rate(m.dtype)) / share

    def round(self, rp_phases: list[Phase], m: ModelArch) -> float:
        _, overhead = self.utilisation(TRAIN, m)
        return overhead + sum(self.phase(p, m) for p in rp_phases)


def preflight(cfg: SweepConfig, archs: list[ModelArch], task: TaskData) -> None:
    """`run`'s checks that need no weights and no tokenizer (sweep/checks.py): the counts against the task, every
    attack plug-in's own."""
    check_counts(cfg, task)
    env = CheckEnv(cfg.models, [a.path for a in archs], [a.vocab for a in archs], cfg.family)
    for group in ("attacks", "train_attacks"):
        for i, a in enumerate(getattr(cfg, group)):
            a.plugin.check(a, f"{group}.{i} ({a.name})", env)


def plan_sweep(cfg: SweepConfig, overrides: list[str], opts: Options, device: Device, device_how: str,
               source: str) -> Plan:
    """The whole plan; a user error names `source`, as `run`'s do."""
    try:
        return _plan_sweep(cfg, overrides, opts, device, device_how, source)
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from None


def _plan_sweep(cfg: SweepConfig, overrides: list[str], opts: Options, device: Device, device_how: str,
                source: str) -> Plan:
    t0 = time.time()
    archs = [model_arch(m, cfg.family, key=f"models.{i}") for i, m in enumerate(cfg.models)]
    task = load_task(cfg.task)
    preflight(cfg, archs, task)
    n_rounds = rounds_per_model(cfg, archs)
    accuracy = {a.label: accuracy_for(a, opts) for a in archs}
    costs = CostModel(cfg, {k: v[0] for k, v in accuracy.items()})
    group_size = [size_ranks(m, cfg.parallel.ranks_per_group) for m in cfg.models]
    timer = Timer(device, opts, cfg, {a.label: g for a, g in zip(archs, group_size, strict=True)})
    runs = plan_runs(cfg)
    sources = transfer_sources(cfg, runs, n_rounds)
    tokens = {mi: task_tokens(task, m, cfg.family) for mi, m in enumerate(cfg.models)}
    run_plans: dict[str, RunPlan] = {}
    for r in runs:
        mi = r.model_index
        run_plans[r.key] = costs.run_plan(r, archs[mi], tokens[mi], n_rounds[mi], sources)
    run_round_s = {k: [timer.round(rr.phases, rp.model) for rr in rp.rounds] for k, rp in run_plans.items()}

    def sampler_of(a):
        return model_arch(sampler_model(a), cfg.family, causal_lm=True) if a.type == "beast" else None

    sizes = []
    for mi, m in enumerate(cfg.models):
        mine = [rp for rp in run_plans.values() if rp.run.model_index == mi]
        mem = plan_memory(cfg, archs[mi], tokens[mi], sampler_of, device.gpu, group_size[mi])
        usable = device.usable_bytes()
        fits = None if not usable else mem.peak <= usable
        advs = [sum(p.flops.nominal for rp in mine for p in rp.rounds[k].phases if p.recorded == "defense_flops")
                / len(mine) for k in range(1, n_rounds[mi] + 1)]
        other = sum(p.flops.nominal for rp in mine for rr in rp.rounds for p in rr.phases if not p.recorded) / len(mine)
        nominal = sum(p.flops.nominal for rp in mine for rr in rp.rounds for p in rr.phases) / len(mine)
        actual = sum(p.flops.actual for rp in mine for rr in rp.rounds for p in rr.phases) / len(mine)
        slow = max(mine, key=lambda rp: sum(run_round_s[rp.run.key]))
        sizes.append(SizePlan(
            label=archs[mi].label, name=m.name_or_path, source=archs[mi].source, n_params=archs[mi].n_params,
            dtype=m.torch_dtype, n_runs=len(mine), rounds=n_rounds[mi],
            finetune=sum(rp.rounds[0].nominal("finetune_flops") for rp in mine) / len(mine),
            attacks={name: p.flops.nominal for name, p in costs.evaluations(archs[mi], tokens[mi]).items()},
            attack_rounds={a.name: len(a.rounds.select(n_rounds[mi])) for a in cfg.attacks},
            advtrain=advs, other=other, nominal=nominal, actual=actual, memory=mem, fits=fits,
            round_s=run_round_s[slow.run.key], run_s=sum(run_round_s[slow.run.key]),
            transfer_s=sum(timer.phase(p, archs[mi]) for rr in slow.rounds for p in rr.phases
                           if p.name.startswith("transfer ")),
            utilisation={k: u for (lab, k), u in timer.used.items() if lab == archs[mi].label},
            accuracy=accuracy[archs[mi].label][0], ranks=group_size[mi],
            sharded=cfg.parallel.shard and group_size[mi] > 1))
    startup = opts.calibration.startup_s if opts.calibration else 0.0
    jobs = plan_jobs(cfg, overrides, n_rounds, run_round_s, device, [float(a.n_params) for a in archs], startup)
    how = (f"calibrated from {opts.calibration.source}" if opts.calibration else
           f"{opts.utilisation:g} of peak for every kind of work (default; --utilisation U, or --calibrate FILE)")
    if timer.missing:
        how += f"; {', '.join(sorted(timer.missing))}: not in that file, {opts.utilisation:g} used"
    sources = sorted({v[1] for v in accuracy.values()})
    plan = Plan(source, device, device_how, how, "; ".join(sources),
                [f"{archs[mi].label}: {t.source}" for mi, t in tokens.items()],
                sizes, jobs, cfg.launch.minutes() * 60.0, cfg.launch.max_requeues)
    plan.startup_s = startup
    plan.sharded = any(s.sharded for s in sizes)
    plan.warnings, plan.notes = warnings_for(cfg, plan, run_plans)
    plan.seconds = time.time() - t0
    return plan


def plan_jobs(cfg: SweepConfig, overrides: list[str], n_rounds: list[int], run_round_s: dict[str, list[float]],
              device: Device, weights: list[float], startup_s: float = 0.0) -> list[JobPlan]:
    """Each job's layout and wall time under parallel.schedule (planner/schedule.py); `weights`: each model's
    parameters, the queue's order."""
    launch, g = cfg.launch, cfg.parallel.ranks_per_group
    tasks = plan_tasks(cfg, quote_times(overrides))
    nodes = job_nodes(cfg.models, g, [len(t.seeds) for t in tasks], launch.nodes, launch.tasks_per_node)
    ranks = nodes * launch.tasks_per_node
    per_size = is_per_size(cfg.models)
    if not per_size and ranks % g:
        raise UserError(f"parallel.ranks_per_group: {g} does not divide the {ranks} ranks"
                        f" (launch.nodes x launch.tasks_per_node)")
    gpus = nodes * launch.gpus_per_node
    jobs = []
    for t in tasks:
        seeds = list(t.seeds)
        runs: list[RunSpec] = [r for r in plan_runs(cfg) if r.seed in seeds]  # model-major, as in the run
        if per_size:
            sizes = size_groups(cfg.models, g, len(seeds))
            members, owners = group_ranks(sizes), groups_of_runs(sizes, len(seeds))
            shape = f"{nodes} node(s), {len(members)} group(s): {describe_sizes(sizes)}"
        else:
            members, owners = equal_groups(ranks, g, len(runs))
            shape = f"{len(members)} group(s) of {g}"
        by_group: list[list[str]] = [[] for _ in members]
        for i, r in enumerate(runs):
            by_group[owners[i]].append(r.key)
        last = {r.key: n_rounds[r.model_index] for r in runs}
        if cfg.parallel.schedule == "queue":
            sizes_groups = {r.model_index: sorted({owners[j] for j, o in enumerate(runs)
                                                   if o.model_index == r.model_index}) for r in runs}
            eligible = {r.key: sizes_groups[r.model_index] if per_size else list(range(len(members))) for r in runs}
            sched = queue_schedule([r.key for r in runs], eligible, len(members), last, run_round_s,
                                   {r.key: weights[r.model_index] for r in runs})
        else:
            sched = barrier_schedule(by_group, last, run_round_s)
        wall = sched.wall_s + startup_s  # the process's start-up, measured by calibration
        sched.round_s[0] += startup_s
        size_of = {r.key: len(members[owners[i]]) for i, r in enumerate(runs)}
        busy = sum(sum(run_round_s[r.key]) * size_of[r.key] for r in runs)
        per = gpus if device.gpu and gpus else ranks
        jobs.append(JobPlan(t.label or "job", seeds, str(t.output), ranks, len(members), gpus,
                            sched.runs_by_group, sched.round_s, wall, wall * per / 3600,
                            busy / 3600, nodes, shape, [len(m) for m in members], cfg.parallel.schedule,
                            sched.items_by_group, sched.busy_by_group))
    return jobs


_TASKS: dict[int, tuple[SweepConfig, object]] = {}


def run_plan_of(cfg: SweepConfig, key: str) -> RunPlan | None:
    """One run's plan in the sweep `cfg` (None if the sweep has no run `key`): calibration replays a stored sweep."""
    runs = {r.key: r for r in plan_runs(cfg)}
    if key not in runs:
        return None
    if id(cfg) not in _TASKS:
        _TASKS[id(cfg)] = (cfg, load_task(cfg.task))  # the config is kept so its id is not reused
    task = _TASKS[id(cfg)][1]
    archs = [model_arch(m, cfg.family) for m in cfg.models]
    n_rounds = rounds_per_model(cfg, archs)
    sources = transfer_sources(cfg, list(runs.values()), n_rounds)
    r = runs[key]
    tt = task_tokens(task, cfg.models[r.model_index], cfg.family)
    return CostModel(cfg).run_plan(r, archs[r.model_index], tt, n_rounds[r.model_index], sources)
