"""The plan as Markdown (the default) or JSON (`--json`); the same numbers in both."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from hpcrobust.planner.calibrate import Calibration
from hpcrobust.planner.checks import duration, gib
from hpcrobust.planner.devices import Device
from hpcrobust.planner.result import Plan


def flops(x: float) -> str:
    return f"{x:.2e}" if x else "0"


def params(n: float) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(int(n))


def rate(x: float) -> str:
    return f"{x / 1e12:.3g} TFLOP/s" if x >= 1e12 else f"{x / 1e9:.3g} GFLOP/s"


def describe_device(d: Device) -> str:
    mem = f", {d.memory_gib:.0f} GiB" if d.memory_gib else ", memory not stated (fit not checked)"
    rates = rate(d.bf16) if d.bf16 == d.fp32 else f"{rate(d.bf16)} bf16 / {rate(d.fp32)} fp32"
    return f"{d.name}: {rates}{mem}"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def _relative(path: str) -> str:
    p = Path(path)
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def _utilisation(u: dict[str, float]) -> str:
    if len({round(v, 6) for v in u.values()}) == 1:
        return f"{next(iter(u.values())):.2g}"
    return " / ".join(f"{k.removeprefix('attack:')} {v:.2g}" for k, v in sorted(u.items()))


def calibration_lines(cal: Calibration) -> list[str]:
    rows = []
    for kind, pts in sorted(cal.points.items()):
        for p in pts:
            fixed = f"{p.overhead_s:.2f}" if kind == "train" else ""
            rows.append([kind, params(p.n_params), flops(p.flops), f"{p.seconds:.1f}",
                         rate(p.flops / p.seconds if p.seconds else 0.0), f"{p.utilisation:.3g}", fixed])
    return [f"Utilisation measured in {cal.source} (actual FLOPs / wall time / peak of {cal.device.name}):", "",
            *_table(["work", "parameters", "actual FLOPs", "seconds", "rate", "utilisation", "fixed s per round"],
                    rows)]


def markdown(plan: Plan, cal: Calibration | None = None) -> str:
    dtypes = sorted({s.dtype for s in plan.sizes})
    lines = [f"## hpcrobust plan: {plan.config}", "",
             f"- device: {describe_device(plan.device)} ({plan.device_how})",
             f"- utilisation: {plan.utilisation_how}"]
    by_source: dict[str, list[str]] = {}
    for t in plan.tokens:
        label, src = t.split(": ", 1)
        by_source.setdefault(src, []).append(label)
    lines += [f"- tokens ({', '.join(labels)}): {src}" for src, labels in by_source.items()]
    lines += [f"- architectures: {', '.join(sorted({s.source for s in plan.sizes}))}",
              f"- planned in {plan.seconds:.1f} s; no model was loaded", ""]
    attacks = list(plan.sizes[0].attacks) if plan.sizes else []
    lines += ["### Compute per run (nominal FLOPs: 2·N·T forward, 4·N·T backward, as the run records them)", ""]
    rows = []
    for s in plan.sizes:
        adv = (flops(s.advtrain[0]) if len(s.advtrain) == 1 else
               f"{flops(s.advtrain[0])} → {flops(s.advtrain[-1])}") if s.advtrain else "-"
        rows.append([s.label, params(s.n_params), flops(s.finetune), *[flops(s.attacks[a]) for a in attacks], adv,
                     str(s.rounds), flops(s.other), flops(s.nominal), str(s.n_runs)])
    picked = [a for a in attacks if any(s.attack_rounds.get(a, s.rounds + 1) != s.rounds + 1 for s in plan.sizes)]
    lines += _table(["size", "parameters", "fine-tuning",
                     *[f"{a} / {'evaluated ' if a in picked else ''}round" for a in attacks],
                     "adv. training / round (1 → last)", "rounds", "not recorded¹", "one run", "runs"], rows)
    lines += ["", f"Whole sweep: {flops(plan.nominal)} nominal FLOPs. ¹ clean accuracy and the transfer matrix,"
              " every round.", ""]
    lines += [f"- `{a}` runs in " + ", ".join(f"{s.attack_rounds[a]} of {s.rounds + 1} rounds ({s.label})"
                                              for s in plan.sizes) + " (attacks.N.rounds)" for a in picked]
    lines += [""] if picked else []
    kinds = ", ".join(dtypes) if dtypes == ["float32"] else f"{', '.join(dtypes)} compute, float32 weights and state"
    held = "each rank holds 1/k of the model (FSDP)" if plan.sharded else "every rank holds the whole model"
    if plan.sharded and not all(s.sharded for s in plan.sizes):
        held = (f"a rank of {', '.join(f'{s.label} (k={s.ranks})' for s in plan.sizes if s.sharded)} holds 1/k of"
                " the model (FSDP), the others the whole model")
    lines += [f"### Peak memory per rank ({kinds}; {held})", ""]
    rows = []
    for s in plan.sizes:
        m = s.memory
        fit = "?" if s.fits is None else ("yes" if s.fits else "**no**")
        rows.append([s.label, gib(m.weights), gib(m.gradients), gib(m.optimizer), gib(m.activations),
                     gib(m.train_peak), gib(m.train_peak_checkpointed), f"{gib(m.scoring_peak)} ({m.scoring_what})",
                     fit])
    lines += _table(["size", "weights", "gradients", "optimizer", "activations", "training peak",
                     "with checkpointing²", "scoring peak (largest)", "fits"], rows)
    lines += ["", f"² per-layer activation checkpointing (models.N.gradient_checkpointing). Usable per device:"
              f" {gib(plan.device.usable_bytes()) if plan.device.memory_gib else 'not stated'}.", ""]
    lines += [f"### Time on {plan.device.name}", ""]
    rows = [[s.label, _utilisation(s.utilisation), duration(s.round_s[0]),
             duration(max(s.round_s[1:])) if len(s.round_s) > 1 else "-", duration(s.run_s), str(s.n_runs)]
            for s in plan.sizes]
    lines += _table(["size", "utilisation", "round 0", "slowest later round", "one run", "runs"], rows)
    lines += ["", "### Layout (what `hpcrobust submit` would use)", ""]
    unit = "GPU-hours" if plan.device.gpu else "rank-hours"
    for j in plan.jobs:
        name = "one job" if j.label == "job" else f"job {j.label}"
        lines.append(f"- {name}: seeds {j.seeds} -> {_relative(j.output)}; {j.ranks} rank(s), {j.gpus} GPU(s),"
                     f" {j.shape}; parallel.schedule {j.schedule}; wall {duration(j.wall_s)} (slowest"
                     f" {'round' if j.schedule == 'rounds' else 'run round'} {duration(max(j.round_s))}),"
                     f" {j.device_hours:.1f} {unit} allocated, {j.busy_hours:.1f} busy")
        for gi, grp in enumerate(j.runs_by_group):
            if j.schedule == "queue":  # runs move between groups: what the work queue would give each one
                lines.append(f"  - group {gi}: " + (f"{j.group_items[gi]} run round(s) of {len(grp)} run(s), busy"
                                                    f" {duration(j.group_busy_s[gi])}, first {grp[0]}" if grp
                                                    else "(idle)"))
            else:
                lines.append(f"  - group {gi}: {', '.join(grp) or '(idle)'}")
    startup = f"; start-up {duration(plan.startup_s)} per job (calibrated)" if plan.startup_s else ""
    lines += [f"- time limit {duration(plan.time_limit_s)}, launch.max_requeues {plan.max_requeues}{startup}", ""]
    if plan.warnings:
        lines += ["### Warnings", "", *[f"- {w}" for w in plan.warnings], ""]
    lines += ["### Notes", "", *[f"- {n}" for n in plan.notes], ""]
    if cal is not None:
        lines += ["### Calibration", "", *calibration_lines(cal), ""]
    lines.append(f"**Total: {plan.device_hours:.1f} {unit} on {plan.device.name} at the utilisation above,"
                 f" wall {duration(plan.wall_s)}.**")
    return "\n".join(lines) + "\n"


def as_json(plan: Plan, cal: Calibration | None = None) -> str:
    data = dataclasses.asdict(plan)
    data["device"]["usable_bytes"] = plan.device.usable_bytes()
    data["totals"] = {"nominal_flops": plan.nominal, "device_hours": plan.device_hours, "wall_s": plan.wall_s}
    for s, d in zip(plan.sizes, data["sizes"], strict=True):
        d["memory"]["peak"] = s.memory.peak
    if cal is not None:
        data["calibration"] = dataclasses.asdict(cal)
    return json.dumps(data, indent=1, default=float) + "\n"


def calibration_json(cal: Calibration) -> str:
    return json.dumps(dataclasses.asdict(cal), indent=1, default=float) + "\n"
