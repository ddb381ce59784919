"""Figures of attack strength: ASR against size (1, 4), attack scaling and its slopes (2), transfer (6)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from hpcrobust.analysis import tables as T
from hpcrobust.analysis.loader import Results
from hpcrobust.analysis.plotting import (
    Figure,
    finish,
    fmt_params,
    grid,
    legend,
    log_axis,
    note,
    panel_title,
    size_axis,
    size_colors,
    size_label,
    size_legends,
)

PANEL = T.PANEL
XAXES = (("flops", "attack compute at t: t × FLOPs/iteration"),
         ("flops_frac", "attack compute at t / pretraining compute"))
ASR_LABEL = "ASR (reference: current candidate)"  # see loader.REFERENCE_ASR


def panels(df: pd.DataFrame, cols: list[str] = PANEL) -> list[tuple]:
    return list(df[cols].drop_duplicates().itertuples(index=False, name=None))


def _multi(res: Results) -> bool:
    return len(res.sweeps) > 1


def asr_vs_size(res: Results, rnd: int = 0) -> Figure:
    """Figure 1: final ASR against parameters per task and attack, with pre- and post-attack accuracy."""
    s = T.asr_summary(res)
    s = s[s["round"] == rnd].reset_index(drop=True)
    keys = panels(s)
    fig, axes = grid(len(keys))
    for ax, key in zip(axes, keys, strict=False):
        g = s[(s[PANEL] == pd.Series(key, index=PANEL)).all(axis=1)]
        x = g["n_params"].to_numpy(np.float64)
        one = (g["interval"] == "wilson95").all()
        err = np.vstack([g["asr_median"] - g["asr_lo"], g["asr_hi"] - g["asr_median"]])
        ax.errorbar(x, g["asr_median"], yerr=np.clip(err, 0, None), marker="o", color="C3", capsize=3,
                    label="ASR " + ("(Wilson 95%)" if one else "(median, min-max)"))
        ax.plot(x, g["asr_cum_median"], marker="x", ls="", color="C3", alpha=0.5, label="ASR, cumulative")
        for col, style, color, lab in (("pre_acc", "--", "C0", "accuracy before attack"),
                                       ("post_acc", ":", "C2", "accuracy after attack")):
            ax.plot(x, g[f"{col}_median"], style, marker="s", ms=4, color=color, label=lab)
            ax.fill_between(x, g[f"{col}_min"], g[f"{col}_max"], color=color, alpha=0.12)
        size_axis(ax, x)
        ax.set_ylim(-0.03, 1.03)
        ax.set_ylabel(f"{ASR_LABEL} / accuracy", fontsize=9)
        ax.set_title(panel_title(key, _multi(res)), fontsize=10)
        legend(ax, loc="best")
    if not keys:
        note(axes[0], "no attacks in these files")
    return Figure("fig1_asr_vs_size", "ASR against model size",
                  finish(fig, f"ASR against model size (round {rnd})"), {"fig1_asr_vs_size": s})


def _size_curves(points: pd.DataFrame) -> pd.DataFrame:
    """Median over seeds, per size and iteration, of attack FLOPs and logit10(smoothed ASR)."""
    keys = [*PANEL, "model_label", "n_params", "iteration"]
    return points.groupby(keys, sort=False).agg(flops=("flops", "median"), flops_frac=("flops_frac", "median"),
                                                 logit=("logit", "median"), n_seeds=("seed", "nunique")
                                                 ).reset_index()


def attack_scaling(res: Results, rnd: int = 0, points: pd.DataFrame | None = None,
                   fits: pd.DataFrame | None = None) -> Figure:
    """Figure 2: logit10 of the smoothed reference ASR against attack compute at t (iterations >= 1), absolute and
    as a fraction of pretraining; the legend's slopes are the reference's unsmoothed fits."""
    points = T.scaling_points(res) if points is None else points
    fits = T.scaling_fits(points) if fits is None else fits
    pts = points[points["round"] == rnd]
    curves = _size_curves(pts)
    fit0 = fits[fits["round"] == rnd]
    keys = panels(curves)
    colors = size_colors(res.runs)
    fig, axes = grid(2 * len(keys), ncols=2, nrows=max(1, len(keys)))
    for i, key in enumerate(keys):
        c = curves[(curves[PANEL] == pd.Series(key, index=PANEL)).all(axis=1)]
        f = fit0[(fit0[PANEL] == pd.Series(key, index=PANEL)).all(axis=1)].set_index("model_label")
        for j, (col, xlab) in enumerate(XAXES):
            ax = axes[2 * i + j]
            for (lab, n), g in c.groupby(["model_label", "n_params"], sort=False):
                fl = f.loc[lab] if lab in f.index else None
                extra = f": slope {fl['slope']:.2f}, R² {fl['r2']:.2f}" if fl is not None and j == 0 else ""
                ax.plot(g[col], g["logit"], color=colors.get(lab), label=size_label(lab, n) + extra)
            log_axis(ax, "x")
            ax.set_xlabel(xlab)
            ax.set_ylabel("logit10(smoothed reference ASR)")
            ax.set_title(panel_title(key, _multi(res)), fontsize=10)
            if not np.isfinite(c[col].to_numpy(np.float64)).any():
                note(ax, "pretraining FLOPs unknown" if j else "no attack FLOPs")
    size_legends(fig, axes, res.runs, loc="best")
    if not keys:
        note(axes[0], "no attack iterations >= 1 with FLOPs in these files")
    return Figure("fig2_attack_scaling", "Attack scaling", finish(fig, f"Attack scaling (round {rnd})"),
                  {"fig2_attack_scaling": curves, "fig2_attack_scaling_fits": fits})


def attack_scaling_slopes(res: Results, rnd: int = 0, fits: pd.DataFrame | None = None) -> Figure:
    """Figure 2b: each size's attack-scaling slope against its parameter count, with the paper's regression of
    slope on log10(parameters) per attack (dashed; needs two sizes)."""
    fits = T.scaling_fits(T.scaling_points(res)) if fits is None else fits
    f = fits[fits["round"] == rnd]
    reg = T.slope_regression(f)
    keys = panels(f, ["sweep", "task"])
    fig, axes = grid(len(keys), ncols=2)
    for ax, (sweep, task) in zip(axes, keys, strict=False):
        g = f[(f["sweep"] == sweep) & (f["task"] == task)]
        for i, (att, a) in enumerate(g.groupby("attack", sort=False)):
            r = reg[(reg["sweep"] == sweep) & (reg["task"] == task) & (reg["attack"] == att)]
            extra = ""
            if len(r) and np.isfinite(r["slope_per_decade"].iloc[0]):
                r = r.iloc[0]
                extra = f": {r.slope_per_decade:+.2f} per decade, R² {r.r2:.2f}"
                xs = np.array([a["n_params"].min(), a["n_params"].max()], dtype=np.float64)
                ax.plot(xs, r.intercept + r.slope_per_decade * np.log10(xs), ls="--", color=f"C{i}", alpha=0.7)
            ax.plot(a["n_params"], a["slope"], marker="o", ls="", color=f"C{i}", label=att + extra)
        size_axis(ax, g["n_params"])
        ax.set_ylabel("slope of logit10(ASR) per decade of attack compute", fontsize=9)
        ax.set_title(f"{sweep}: {task}" if _multi(res) else task, fontsize=10)
        legend(ax, title="attack")
    if not keys:
        note(axes[0], "no fits: no attack iterations with FLOPs")
    notes = [f"{r.task} / {r.attack}, size {r.model_label} ({fmt_params(r.n_params)}): slope {r.slope:.3f},"
             f" R² {r.r2:.3f} over {r.n_points} points" for r in f.itertuples()]
    notes += [f"{r.task} / {r.attack}: slope = {r.intercept:.3f} {r.slope_per_decade:+.3f} × log10(parameters),"
              f" R² {r.r2:.3f} over {r.n_sizes} sizes" if np.isfinite(r.slope_per_decade) else
              f"{r.task} / {r.attack}: no regression on size ({r.n_sizes} size; two are needed)"
              for r in reg.itertuples()]
    return Figure("fig2b_attack_scaling_slopes", "Attack-scaling slopes against size",
                  finish(fig, f"Attack-scaling slopes (round {rnd})"),
                  {"fig2b_attack_scaling_slopes": f, "fig2b_attack_scaling_slopes_regression": reg}, notes)


def asr_vs_size_by_round(res: Results) -> Figure:
    """Figure 4: final ASR against parameters, one line per adversarial-training round."""
    s = T.asr_summary(res)
    keys = panels(s)
    fig, axes = grid(len(keys))
    rounds = sorted(s["round"].unique())
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("plasma")
    for ax, key in zip(axes, keys, strict=False):
        g = s[(s[PANEL] == pd.Series(key, index=PANEL)).all(axis=1)]
        for r, gr in g.groupby("round"):
            col = cmap(0.85 * rounds.index(r) / max(1, len(rounds) - 1))
            ax.plot(gr["n_params"], gr["asr_median"], marker="o", color=col, label=f"round {r}")
        size_axis(ax, g["n_params"])
        ax.set_ylim(-0.03, 1.03)
        ax.set_ylabel("reference ASR (median over seeds)")
        ax.set_title(panel_title(key, _multi(res)), fontsize=10)
        legend(ax, ncols=2 if len(rounds) > 6 else 1)
    return Figure("fig4_asr_vs_size_by_round", "ASR against size, by round",
                  finish(fig, "ASR against model size, by adversarial-training round"),
                  {"fig4_asr_vs_size_by_round": s})


def transfer_heatmap(res: Results) -> Figure:
    """Figure 6: source-size x target-size transfer ASR (same-seed pairs, mean over seeds); round 0 and last."""
    ts = T.transfer_sizes(res)
    keys = []
    for (sweep, attack), g in ts.groupby(["sweep", "attack"], sort=False):
        keys += [(sweep, attack, r) for r in sorted({g["round"].min(), g["round"].max()})]
    per_row = max(1, len({k[2] for k in keys}))  # round 0 and the last round side by side
    fig, axes = grid(len(keys), ncols=min(per_row, 2), w=4.6, h=4.0)
    for ax, (sweep, attack, r) in zip(axes, keys, strict=False):
        g = ts[(ts["sweep"] == sweep) & (ts["attack"] == attack) & (ts["round"] == r)]
        src = g.drop_duplicates("source_label").sort_values("source_n_params")["source_label"].tolist()
        tgt = g.drop_duplicates("target_label").sort_values("target_n_params")["target_label"].tolist()
        mat = g.pivot(index="source_label", columns="target_label", values="asr").reindex(index=src, columns=tgt)
        im = ax.imshow(mat.to_numpy(np.float64), vmin=0, vmax=1, cmap="magma", origin="lower")
        ax.set_xticks(range(len(tgt)), tgt, rotation=45, fontsize=8)
        ax.set_yticks(range(len(src)), src, fontsize=8)
        if len(src) <= 8:  # beyond that the numbers are unreadable (and slow to draw)
            for (i, j), v in np.ndenumerate(mat.to_numpy(np.float64)):
                if np.isfinite(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if v < 0.6 else "black")
        ax.set_xlabel("target model (evaluated on)")
        ax.set_ylabel("source model (attack found on)")
        ax.set_title(f"{sweep + ': ' if _multi(res) else ''}{attack}, round {r}", fontsize=10)
        fig.colorbar(im, ax=ax, label="transfer ASR", shrink=0.8)
    if not keys:
        axes[0].set_xlabel("target model (evaluated on)")
        axes[0].set_ylabel("source model (attack found on)")
        note(axes[0], "no committed transfer matrices in these files")
    return Figure("fig6_transfer_matrix", "Cross-size transfer", finish(fig, "Cross-size transfer of attacks"),
                  {"fig6_transfer_matrix": ts})
