"""`analyze`: every figure (PNG + CSV) and table of the study into one folder, linked from report.md.

Inputs are checked (and the output folder validated) before anything is written, so bad input
costs one line and leaves no half-written report.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from hpcrobust.analysis import figures_attack as FA
from hpcrobust.analysis import figures_defense as FD
from hpcrobust.analysis import tables as T
from hpcrobust.analysis.loader import CUMULATIVE_ASR, Results, load
from hpcrobust.analysis.plotting import Figure, fmt_params
from hpcrobust.errors import UserError


@dataclass
class Report:
    out: Path
    figures: list[str] = field(default_factory=list)  # PNG file names
    files: list[str] = field(default_factory=list)  # every file written, relative to out


def check_out(out: str | Path) -> Path:
    """An output folder that exists, or can be made, and takes new files (checked by making and removing one:
    permission bits say nothing for root, or on a read-only mount). Nothing is left behind."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"output folder {out} exists and is not a folder")
    if not out.exists() and out.parent.exists() and not out.parent.is_dir():
        raise UserError(f"cannot create {out}: {out.parent} is not a folder")
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".hpcrobust-probe-"):
            pass
    except OSError as exc:
        raise UserError(f"output folder {out} is not writable ({probe}: {exc.strerror})") from None
    return out


def figures(res: Results, targets: tuple[float, ...] = T.DEFAULT_TARGETS, n_boot: int = 1000) -> list[Figure]:
    """Every figure of the study, in paper order; shared intermediate tables are computed once."""
    points = T.scaling_points(res)
    fits = T.scaling_fits(points)
    off = T.offense_points(res, targets)
    return [FA.asr_vs_size(res), FA.attack_scaling(res, points=points, fits=fits),
            FA.attack_scaling_slopes(res, fits=fits), FD.advtrain_rounds(res), FD.advtrain_defense(res),
            FD.advtrain_transfer(res), FA.asr_vs_size_by_round(res),
            FD.offense_defense(res, targets, n_boot, points=off), FA.transfer_heatmap(res)]


def md_table(df: pd.DataFrame, floatfmt: str = ".4g") -> str:
    """A GitHub-markdown table (no extra dependency)."""
    def cell(v) -> str:
        if isinstance(v, (float, np.floating)):
            return "" if not np.isfinite(v) else format(v, floatfmt)
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _inputs(res: Results) -> list[str]:
    lines = []
    for sw in res.sweeps:
        r = res.runs[res.runs["sweep"] == sw.label]
        named = f" (experiment `{sw.experiment}`)" if sw.experiment and sw.experiment != sw.label else ""
        lines.append(f"- sweep `{sw.label}`{named} ({', '.join(f'`{p}`' for p in sw.files)}): {len(r)} runs,"
                     f" sizes {', '.join(f'{lab} ({fmt_params(n)})' for lab, n in r.drop_duplicates('model_label')[['model_label', 'n_params']].itertuples(index=False))},"  # noqa: E501
                     f" seeds {', '.join(map(str, sorted(r['seed'].unique())))},"
                     f" rounds 0..{int(r['n_rounds'].max()) - 1}, trained against `{r['train_attack'].iloc[0]}`")
    return lines


def definitions(res: Results) -> list[str]:
    """What the numbers mean (the reference's definitions), and loud notes where a file departs from them."""
    md = ["## Definitions", "",
          "- **ASR at iteration t** (figures and fits): the share of the examples classified correctly before the"
          " attack whose *current* candidate at iteration t is misclassified, as in the paper's code (0 at t = 0)."
          " The cumulative ASR (flipped at or before t) is the `asr_cum` column of the CSVs.",
          "- **Attack compute at t**: t × (total attack FLOPs / n_iterations), averaged over seeds; iteration 0's"
          " setup (GCG's initial string) is spread over the iterations, as in the paper's code.",
          "- **Slope**: OLS of logit10(ASR) on log10(attack compute at t) per size, seeds pooled, iterations ≥ 1,"
          " points at ASR 0 or 1 dropped, no smoothing (figure 2's curves are Laplace-smoothed for drawing).",
          "- **Offense/defense**: the iteration where the ASR first reaches the target (linear interpolation) times"
          " the size's mean FLOPs per iteration; defense compute = training + training-attack FLOPs of rounds"
          " 1..r (evaluation excluded); as fractions: per attacked example, and the seed-mean per (size, round),"
          " over pretraining compute 6·N·D.", ""]
    att = res.attacks
    old = att[att["asr_definition"] == CUMULATIVE_ASR]
    if len(old):
        md += [f"> **Note:** no `asr_current` for {_which(old)} (files written before it existed): their ASR is"
               " the cumulative one (flipped at or before t), not the paper's.", ""]
    early = att[att["early_stop"] == 1]
    if len(early):
        md += [f"> **Early stopping:** for {_which(early)}, examples stopped at their first success (`early_stop`)."
               " The later iterations then cost less and the ASR is cumulative, so their compute axis,"
               " attack-scaling slopes and offense/defense compute are not comparable to the paper's (which runs"
               " every iteration on every example).", ""]
    return md


def _which(att: pd.DataFrame) -> str:
    pairs = att[["sweep", "attack"]].drop_duplicates()
    multi = pairs["sweep"].nunique() > 1
    names = [f"`{sw}/{a}`" if multi else f"`{a}`" for sw, a in pairs.itertuples(index=False)]
    return ("attack " if len(names) == 1 else "attacks ") + ", ".join(names)


def analyze(paths: list[str | Path], out: str | Path, targets: tuple[float, ...] = T.DEFAULT_TARGETS,
            n_boot: int = 1000) -> Report:
    """Read `paths`, write every figure, its CSV, the tables and report.md into `out`."""
    out = check_out(out)
    if not targets or any(not 0 < t < 1 for t in targets):
        raise UserError("target ASRs must lie strictly between 0% and 100%")
    res = load(paths)
    out.mkdir(parents=True, exist_ok=True)
    rep = Report(out)
    title = res.title
    md = [f"# {title}: hpcrobust analysis" if title else "# hpcrobust analysis", "", "Inputs:", *_inputs(res), "",
          *definitions(res)]
    figs = figures(res, tuple(targets), n_boot)
    for fig in figs:
        if title:
            fig.fig.suptitle(": ".join(t for t in (title, fig.fig.get_suptitle()) if t))
        names = fig.save(out)
        rep.figures.append(names[0])
        rep.files += names
        md += [f"## {fig.title}", "", f"![{fig.title}]({names[0]})", "",
               "Data: " + ", ".join(f"[{n}]({n})" for n in names[1:]), ""]
        if fig.notes:
            md += [f"- {n}" for n in fig.notes] + [""]
        if fig.name == "fig5_offense_defense":
            md += _missing(fig.tables["fig5_offense_defense"])
    off = next(f for f in figs if f.name == "fig5_offense_defense").tables["fig5_offense_defense"]
    md += _tables(res, rep, T.never_reached(off))
    (out / "report.md").write_text("\n".join(md) + "\n")
    rep.files.append("report.md")
    return rep


def _missing(points: pd.DataFrame) -> list[str]:
    n_never, n_all = int(points["never"].sum()), len(points)
    return [f"Attack compute to reach a target is recorded as missing when the ASR never reaches it:"
            f" {n_never} of {n_all} (run, round, attack, target) cases.", ""]


def _tables(res: Results, rep: Report, never: pd.DataFrame) -> list[str]:
    pre, hyper = T.pretrain_table(res), T.hyperparameter_table(res)
    compute, attempts = T.compute_table(res), T.attempts_table(res)
    for stem, df in (("table7a_pretrain_flops", pre), ("table7b_hyperparameters", hyper),
                     ("table7c_never_reached", never), ("table8a_compute", compute), ("table8b_attempts", attempts)):
        df.to_csv(rep.out / f"{stem}.csv", index=False)
        rep.files.append(f"{stem}.csv")
    overall = never.groupby([*T.PANEL, "target", "model_label", "n_params"], sort=False).agg(
        n_runs=("n_runs", "sum"), n_never=("n_never", "sum")).reset_index()
    overall["frac_never"] = overall["n_never"] / overall["n_runs"]
    overall["target"] = overall["target"].map(lambda t: f"{t:.0%}")
    attacks = res.attack_info.drop(columns=["sweep"] if len(res.sweeps) == 1 else [])
    return ["## Tables", "", "### Evaluation attacks", "", md_table(attacks), "",
            "### Pretraining compute per model", "", md_table(pre), "",
            "Data: [table7a_pretrain_flops.csv](table7a_pretrain_flops.csv)", "",
            "### Fraction of runs that never reach each target ASR (all rounds)", "",
            md_table(overall.drop(columns=["sweep"] if len(res.sweeps) == 1 else [])), "",
            "Per round: [table7c_never_reached.csv](table7c_never_reached.csv)", "",
            *_compute(res, compute, attempts),
            "### Hyperparameters (from the stored config)", "",
            "<details><summary>show</summary>", "", md_table(hyper), "", "</details>", "",
            "Data: [table7b_hyperparameters.csv](table7b_hyperparameters.csv)", ""]


def _compute(res: Results, compute: pd.DataFrame, attempts: pd.DataFrame) -> list[str]:
    """The compute table: device-hours per size from the rounds' provenance, and every attempt's hosts and code."""
    drop = ["sweep"] if len(res.sweeps) == 1 else []
    md = ["### Compute used", "",
          "Device-hours per size: each round's wall time times the devices of its run's group (GPU-hours on GPUs,"
          " core-hours on CPU), summed over the committed rounds; cross-run phases (transfer, ensemble) and idle"
          " time are in the attempts' totals below.", ""]
    if not len(compute) or compute["device_hours"].isna().all():
        md += ["No device-hours recorded (files written before provenance was stored).", ""]
    else:
        md += [md_table(compute.drop(columns=drop)), ""]
    if len(attempts):
        a = attempts.drop(columns=[*drop, "file"] if len(res.sweeps[0].files) == 1 and len(res.sweeps) == 1
                          else drop).copy()
        a["git_commit"] = [f"{str(c)[:12]}{'+dirty' if d == 1 else ''}" if isinstance(c, str) and c else "-"
                           for c, d in zip(a["git_commit"], a["git_dirty"], strict=True)]
        md += ["Attempts (each start of the sweep on a file; device-hours: from its start to its last commit):", "",
               md_table(a.drop(columns=["git_dirty"])), ""]
    md += ["Data: [table8a_compute.csv](table8a_compute.csv), [table8b_attempts.csv](table8b_attempts.csv)", ""]
    return md


def script_main(draw: Callable[[Results], Figure], argv: list[str] | None = None) -> int:
    """Entry of the thin scripts in analysis/: `python analysis/<fig>.py FILE... --out DIR` draws one figure."""
    p = argparse.ArgumentParser(description=(draw.__doc__ or "").split("\n")[0])
    p.add_argument("files", nargs="+", metavar="FILE", help="hpcrobust result files (HDF5)")
    p.add_argument("--out", default=".", help="folder for the PNG and CSV (default: here)")
    args = p.parse_args(argv)
    try:
        out = check_out(args.out)
        res = load(args.files)
        out.mkdir(parents=True, exist_ok=True)
        for n in draw(res).save(out):
            print(out / n)
    except UserError as exc:
        print(f"hpcrobust: error: {exc}", file=sys.stderr)
        return 2
    return 0
