"""Utilisation measured from a finished sweep: what fraction of the device's peak each kind of work reached.

A results file records, per run and round, the round's wall time and training FLOPs, and per attack its wall
time and actual FLOPs. The file also stores its config, so the plan of that very sweep gives the FLOPs the
file does not record (clean accuracy, the training attack of an adversarial round). Then, per model size:

    attack:<type>   sum of actual FLOPs / sum of wall time over every attack record of that type
    train           the rest of each round (training, clean accuracy, pool refresh, loading and saving the
                    model), after taking out the training attack at its type's rate: fitted as
                    seconds = FLOPs / rate + a fixed cost per round (when the rounds differ enough to tell);
                    the sweep's first round is left out of the fit, and what it took beyond the fit is the
                    process's start-up, charged once per job
    accuracy        the share of evaluation-attack examples classified correctly (only those are attacked),
                    which the plan assumes for the same size unless --accuracy says otherwise

and utilisation = rate / device peak. A size the file does not hold is interpolated in log(parameters)
between the sizes it holds (the nearest one outside their range).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from hpcrobust.config import SweepConfig, config_from_dict
from hpcrobust.errors import UserError
from hpcrobust.planner.costs import TRAIN
from hpcrobust.planner.devices import Device
from hpcrobust.store import schema as S
from hpcrobust.store.results import ResultsFile, is_committed


@dataclass
class Point:
    n_params: int
    utilisation: float
    overhead_s: float = 0.0  # fixed seconds per round (kind "train" only)
    flops: float = 0.0
    seconds: float = 0.0


@dataclass
class Calibration:
    source: str
    device: Device
    points: dict[str, list[Point]] = field(default_factory=dict)  # kind -> sizes, ascending
    accuracy: dict[int, float] = field(default_factory=dict)  # parameters -> share of attacked examples correct
    startup_s: float = 0.0  # the first round's extra seconds (imports, first loads): once per job

    def lookup(self, kind: str, n_params: int) -> tuple[float, float] | None:
        """(utilisation, fixed seconds per round) for a kind of work on a model of `n_params`; None if unknown."""
        pts = self.points.get(kind)
        if not pts:
            return None
        if n_params <= pts[0].n_params:
            return pts[0].utilisation, pts[0].overhead_s
        if n_params >= pts[-1].n_params:
            return pts[-1].utilisation, pts[-1].overhead_s
        for lo, hi in zip(pts, pts[1:], strict=False):
            if lo.n_params <= n_params <= hi.n_params:
                w = (math.log(n_params) - math.log(lo.n_params)) / (math.log(hi.n_params) - math.log(lo.n_params))
                return ((1 - w) * lo.utilisation + w * hi.utilisation, (1 - w) * lo.overhead_s + w * hi.overhead_s)
        return None


def stored_sweep(path: str | Path) -> SweepConfig:
    """The config a results file was written with (its own one-line errors if the file is not one)."""
    try:
        data = ResultsFile(path).stored_config()
    except (KeyError, OSError, yaml.YAMLError):
        raise UserError(f"{path}: the stored config is missing or unreadable") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: the stored config is missing or unreadable")
    return config_from_dict(data, source=f"{path} (stored config)")


def fit_rate(flops: list[float], seconds: list[float]) -> tuple[float, float]:
    """(FLOP/s, fixed seconds per record) from seconds = flops / rate + c; c = 0 when that is all one can tell."""
    f, t = np.asarray(flops, dtype=float), np.asarray(seconds, dtype=float)
    ratio = (f.sum() / t.sum(), 0.0)
    if len(f) < 2 or f.max() < 1.5 * f.min():
        return ratio
    slope, c = np.polyfit(f, t, 1)
    if slope <= 0 or c < 0:
        return ratio
    return 1.0 / slope, float(c)


def calibrate(path: str | Path, device: Device, plan_run) -> Calibration:
    """`plan_run(cfg, run_key)` gives the RunPlan of one run of the stored sweep (for the unrecorded FLOPs)."""
    cfg = stored_sweep(path)
    types = {a.name: a.type for a in cfg.attacks}
    samples: dict[tuple[str, int], list[tuple[float, float]]] = {}
    rests: dict[int, list[tuple[float, float, dict, bool]]] = {}
    dtypes: dict[int, str] = {}
    correct: dict[int, list[int]] = {}
    with ResultsFile(path).open() as f:
        for key, g in f.get(S.RUNS, {}).items():
            rp = plan_run(cfg, key)
            if rp is None:
                continue
            n, dtype = rp.model.n_params, rp.model.dtype
            dtypes[n] = dtype
            first_run = int(g.attrs.get(S.RUN_INDEX, -1)) == 0
            for rname, rg in g[S.ROUNDS].items():
                if not is_committed(rg):
                    continue
                rnd = int(rname)
                spent = 0.0
                for aname, ag in rg.get(S.ATTACKS, {}).items():
                    wall = float(ag[S.ATTACK_WALL_TIME][()])
                    samples.setdefault((f"attack:{types.get(aname, '?')}", n), []).append(
                        (float(ag[S.ATTACK_FLOPS_ACTUAL][()].sum()), wall))
                    before = ag[S.CORRECT_BEFORE][()]
                    correct.setdefault(n, [0, 0])[0] += int(before.sum())
                    correct[n][1] += len(before)
                    spent += wall
                rest = float(rg[S.WALL_TIME][()]) - spent
                plan_round = rp.rounds[rnd] if rnd < len(rp.rounds) else None
                clean = plan_round.phase("clean accuracy").flops.actual if plan_round else 0.0
                train_attack = {}
                if plan_round is not None and rnd > 0:
                    ph = plan_round.phase("training attack")
                    train_attack = {ph.kind: ph.flops.actual}
                flops = float(rg[S.FLOPS_ACTUAL][()]) + clean
                rests.setdefault(n, []).append((flops, rest, train_attack, first_run and rnd == 0))
    if not rests:
        raise UserError(f"{path} has no committed rounds to calibrate with")
    cal = Calibration(str(path), device)
    cal.accuracy = {n: c / t for n, (c, t) in correct.items() if t}
    rates: dict[tuple[str, int], float] = {}
    for (kind, n), recs in sorted(samples.items()):
        rate = sum(r[0] for r in recs) / max(1e-9, sum(r[1] for r in recs))
        rates[(kind, n)] = rate
        cal.points.setdefault(kind, []).append(Point(n, rate / device.rate(dtypes[n]), 0.0,
                                                     sum(r[0] for r in recs), sum(r[1] for r in recs)))
    for n, recs in sorted(rests.items()):
        rows = []
        for fl, sec, ta, first in recs:
            for kind, f_attack in ta.items():  # the training attack at its type's rate, from this size's records
                if rates.get((kind, n)):
                    sec -= f_attack / rates[(kind, n)]
                else:
                    fl += f_attack
            rows.append((fl, max(sec, 1e-6), first))
        usual = [r for r in rows if not r[2]] or rows  # the sweep's very first round also warms the process up
        rate, c = fit_rate([r[0] for r in usual], [r[1] for r in usual])
        for fl, sec, first in rows:
            if first and len(usual) < len(rows):
                cal.startup_s = max(0.0, sec - fl / rate - c)
        cal.points.setdefault(TRAIN, []).append(Point(n, rate / device.rate(dtypes[n]), c, sum(r[0] for r in usual),
                                                      sum(r[1] for r in usual)))
    for pts in cal.points.values():
        pts.sort(key=lambda p: p.n_params)
    return cal
