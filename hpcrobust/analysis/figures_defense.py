"""Figures of adversarial training: ASR by round and defense compute (3), transfer across attacks (3c),
and offense against defense compute (5).

Round 0 has no defense compute, so it cannot sit on a log axis of defense FLOPs: those views and the
offense/defense fits use rounds >= 1 only (round 0 still appears in the ASR-by-round view).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from hpcrobust.analysis import tables as T
from hpcrobust.analysis.figures_attack import PANEL, panels
from hpcrobust.analysis.loader import Results
from hpcrobust.analysis.plotting import (
    Figure,
    finish,
    fmt_params,
    grid,
    log_axis,
    note,
    panel_title,
    size_colors,
    size_label,
    size_legends,
)

NO_ROUNDS = "no adversarial-training rounds (round >= 1) in these files"


def _sel(df: pd.DataFrame, key: tuple, cols: list[str] = PANEL) -> pd.DataFrame:
    return df[(df[cols] == pd.Series(key, index=cols)).all(axis=1)]


def _by_round(res: Results) -> pd.DataFrame:
    """ASR summary per (panel, round, size) with the median cumulative defense FLOPs and, as the reference's
    defense axis, the seed-mean of it over pretraining compute (`defense_frac`)."""
    s = T.asr_summary(res)
    g = res.attacks.groupby([*PANEL, "model_label", "round"], sort=False)
    d = g.agg(defense_flops_cum=("defense_flops_cum", "median"), _mean=("defense_flops_cum", "mean"),
              _pre=("pretrain_flops", "first")).reset_index()
    d["defense_frac"] = d["_mean"] / d["_pre"].where(d["_pre"] > 0)
    return s.merge(d.drop(columns=["_mean", "_pre"]), on=[*PANEL, "model_label", "round"], how="left")


def _draw_sizes(ax, g: pd.DataFrame, x: str, colors: dict) -> None:
    if x == "round":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for (lab, n), gs in g.groupby(["model_label", "n_params"], sort=False):
        gs = gs.sort_values("round")
        ax.plot(gs[x], gs["asr_median"], marker="o", ms=4, color=colors.get(lab), label=size_label(lab, n))
        ax.fill_between(gs[x], gs["asr_lo"], gs["asr_hi"], color=colors.get(lab), alpha=0.15)


def advtrain_rounds(res: Results) -> Figure:
    """Figure 3: ASR against adversarial-training round, one line per size, per evaluation attack."""
    s = _by_round(res)
    colors = size_colors(res.runs)
    keys = panels(s)
    fig, axes = grid(len(keys))
    for ax, key in zip(axes, keys, strict=False):
        _draw_sizes(ax, _sel(s, key), "round", colors)
        ax.set_xlabel("adversarial-training round")
        ax.set_ylabel("reference ASR (median; band: min-max or Wilson 95%)")
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(panel_title(key, len(res.sweeps) > 1), fontsize=10)
    size_legends(fig, axes, res.runs)
    return Figure("fig3_advtrain_rounds", "ASR against adversarial-training round",
                  finish(fig, "Adversarial training: ASR against round"), {"fig3_advtrain_rounds": s})


DEFENSE_AXES = (("defense_flops_cum", "cumulative defense FLOPs"),
                ("defense_frac", "defense compute / pretraining compute"))


def advtrain_defense(res: Results) -> Figure:
    """Figure 3b: ASR against cumulative defense compute (training + training-attack FLOPs of rounds 1..r,
    evaluation excluded), absolute and as a fraction of pretraining compute; one line per size."""
    s = _by_round(res)
    s = s[(s["round"] >= 1) & (s["defense_flops_cum"] > 0)].reset_index(drop=True)
    colors = size_colors(res.runs)
    keys = panels(s) or panels(T.asr_summary(res))
    fig, axes = grid(2 * len(keys), ncols=2, nrows=max(1, len(keys)))
    for i, key in enumerate(keys):
        g = _sel(s, key)
        for j, (col, xlab) in enumerate(DEFENSE_AXES):
            ax = axes[2 * i + j]
            gj = g[g[col] > 0]
            _draw_sizes(ax, gj, col, colors)
            if len(gj):
                log_axis(ax, "x")
            else:
                note(ax, "pretraining FLOPs unknown" if j and len(g) else NO_ROUNDS)
            ax.set_xlabel(xlab)
            ax.set_ylabel("reference ASR (median over seeds)")
            ax.set_ylim(-0.03, 1.03)
            ax.set_title(panel_title(key, len(res.sweeps) > 1), fontsize=10)
    size_legends(fig, axes, res.runs)
    return Figure("fig3b_advtrain_defense_flops", "ASR against defense compute",
                  finish(fig, "Adversarial training: ASR against cumulative defense compute"),
                  {"fig3b_advtrain_defense_flops": s}, [] if len(s) else [NO_ROUNDS])


def advtrain_transfer(res: Results) -> Figure:
    """Figure 3c: models trained against one attack, evaluated against each attack (rows: training attack)."""
    s = _by_round(res)
    runs = res.runs.drop_duplicates("sweep").set_index("sweep")
    s["train_attack"] = s["sweep"].map(runs["train_attack"])
    s["train_attack_type"] = s["sweep"].map(runs["train_attack_type"])
    rows = list(s[["sweep", "task", "train_attack", "train_attack_type"]].drop_duplicates().itertuples(
        index=False, name=None))
    evals = list(dict.fromkeys(s["attack"]))
    colors = size_colors(res.runs)
    fig, axes = grid(len(rows) * len(evals), ncols=len(evals), nrows=len(rows))
    for i, (sweep, task, tr, trt) in enumerate(rows):
        for j, ev in enumerate(evals):
            ax = axes[i * len(evals) + j]
            g = s[(s["sweep"] == sweep) & (s["task"] == task) & (s["attack"] == ev)]
            _draw_sizes(ax, g, "round", colors)
            if not len(g):
                note(ax, f"{ev} not evaluated here")
            ax.set_xlabel("adversarial-training round")
            ax.set_ylabel("reference ASR (median over seeds)")
            ax.set_ylim(-0.03, 1.03)
            same_tr = sum(r[2] == tr and r[1] == task for r in rows) > 1  # only then is the sweep needed
            ax.set_title(f"{sweep + ': ' if same_tr else ''}trained vs {tr} ({trt})\nevaluated with {ev}",
                         fontsize=9)
    size_legends(fig, axes, res.runs)
    first_last = s.sort_values("round").groupby(["sweep", "task", "attack", "model_label"], sort=False)
    summary = first_last.agg(train_attack=("train_attack", "first"), train_attack_type=("train_attack_type", "first"),
                             n_params=("n_params", "first"), first_round=("round", "first"),
                             asr_first=("asr_median", "first"), last_round=("round", "last"),
                             asr_last=("asr_median", "last")).reset_index()
    summary = summary.rename(columns={"attack": "eval_attack"})
    summary["asr_change"] = summary["asr_last"] - summary["asr_first"]
    summary = summary.sort_values(["sweep", "task", "eval_attack", "n_params"], kind="stable")
    return Figure("fig3c_advtrain_transfer", "Trained against one attack, evaluated against another",
                  finish(fig, "Adversarial training: transfer across attacks"),
                  {"fig3c_advtrain_transfer": s, "fig3c_advtrain_transfer_summary": summary})


def _slope_text(fl: pd.Series) -> str:
    if not np.isfinite(fl["slope"]):
        return "slope n/a"
    ci = f" [{fl['ci_lo']:.2f}, {fl['ci_hi']:.2f}]" if np.isfinite(fl["ci_lo"]) else ""
    return f"slope {fl['slope']:.2f}{ci}"


def _guides(ax, xs: np.ndarray, ys: np.ndarray) -> None:
    """Slope-1 lines (parity: attack compute grows as fast as defense compute), one per decade of offset."""
    lx, ly = np.log10(xs), np.log10(ys)
    x0, x1 = lx.min() - 0.2, lx.max() + 0.2
    y0, y1 = ly.min() - 0.2, ly.max() + 0.2
    for c in np.arange(np.floor(y0 - x1), np.ceil(y1 - x0) + 1):
        ax.plot(10 ** np.array([x0, x1]), 10 ** (np.array([x0, x1]) + c), color="0.7", lw=0.7, ls="--", zorder=0)
    ax.set_xlim(10**x0, 10**x1)
    ax.set_ylim(10**y0, 10**y1)


OFFENSE_AXES = (("defense_flops_cum", "attack_flops", "cumulative defense FLOPs", "attack FLOPs to reach {t:.0%} ASR"),
                ("defense_frac", "attack_frac", "defense compute / pretraining compute",
                 "attack compute per example to {t:.0%} ASR\n/ pretraining compute"))


def offense_defense(res: Results, targets: tuple[float, ...] = T.DEFAULT_TARGETS, n_boot: int = 1000,
                    points: pd.DataFrame | None = None) -> Figure:
    """Figure 5: attack compute to reach each target ASR against cumulative defense compute, log-log, per size,
    with slope-1 guides: absolute FLOPs with a per-size slope (bootstrap CI over seeds), then both as fractions
    of pretraining compute, as the reference draws it. Rounds >= 1 only."""
    points = T.offense_points(res, targets) if points is None else points
    fits = T.offense_fits(points, n_boot)
    ok = points[(points["round"] >= 1) & (points["defense_flops_cum"] > 0) & (points["attack_flops"] > 0)]
    keys = panels(points)
    colors = size_colors(res.runs)
    ncols = max(1, len(keys))
    fig, axes = grid(2 * len(targets) * ncols, ncols=ncols, nrows=2 * len(targets))
    for i, t in enumerate(targets):
        for v, (xcol, ycol, xlab, ylab) in enumerate(OFFENSE_AXES):
            for j, key in enumerate(keys):
                ax = axes[(2 * i + v) * ncols + j]
                g = _sel(ok[(ok["target"] == t) & (ok[xcol] > 0) & (ok[ycol] > 0)], key)
                f = _sel(fits[fits["target"] == t], key).set_index("model_label")
                for (lab, n), gs in g.groupby(["model_label", "n_params"], sort=False):
                    ax.scatter(gs[xcol], gs[ycol], s=8, alpha=0.35, color=colors.get(lab))
                    med = gs.groupby("round")[[xcol, ycol]].median()
                    extra = f": {_slope_text(f.loc[lab])}" if v == 0 else ""
                    ax.plot(med[xcol], med[ycol], marker="o", ms=3, color=colors.get(lab),
                            label=size_label(lab, n) + extra)
                missing = int(_sel(points[(points["target"] == t) & (points["round"] >= 1)], key)["never"].sum())
                if len(g):
                    log_axis(ax, "x")
                    log_axis(ax, "y")
                    _guides(ax, g[xcol].to_numpy(np.float64), g[ycol].to_numpy(np.float64))
                elif v and len(_sel(ok[ok["target"] == t], key)):
                    note(ax, "pretraining FLOPs unknown")
                else:
                    note(ax, NO_ROUNDS if not (points["round"] >= 1).any() else f"{t:.0%} ASR never reached")
                ax.text(0.02, 0.98, f"never reached: {missing}", transform=ax.transAxes, va="top", fontsize=8)
                ax.set_xlabel(xlab)
                ax.set_ylabel(ylab.format(t=t), fontsize=9)
                ax.set_title(panel_title(key, len(res.sweeps) > 1) + f", target {t:.0%}", fontsize=10)
    size_legends(fig, axes, res.runs, loc="lower right")
    return Figure("fig5_offense_defense", "Offense against defense compute",
                  finish(fig, "Offense vs defense (dashed: slope 1, parity)"),
                  {"fig5_offense_defense": points, "fig5_offense_defense_slopes": fits}, verdict_sentences(fits))


def verdict_sentences(fits: pd.DataFrame) -> list[str]:
    """The report's words on who is ahead, per size: slope > 1 means each 10x of defense compute forces the
    attacker to spend more than 10x, so defense is ahead; < 1, offense is ahead."""
    out = []
    for r in fits.itertuples():
        where = f"{r.task} / {r.attack}, {r.target:.0%} ASR, size {r.model_label} ({fmt_params(r.n_params)})"
        if not np.isfinite(r.slope):
            out.append(f"{where}: {r.verdict}; {r.n_missing} missing (target never reached).")
            continue
        ci = f" (95% CI {r.ci_lo:.2f} to {r.ci_hi:.2f})" if np.isfinite(r.ci_lo) else ""
        out.append(f"{where}: slope {r.slope:.2f}{ci}: **{r.verdict}**; each 10x of defense compute multiplies the"
                   f" attack compute needed by {10 ** r.slope:.3g}x; {r.n_missing} missing.")
    return out
