"""Shared drawing conventions: one colour per model size (dark = small), panel grids, and the Figure record.

Matplotlib runs headless (Agg), so analysis works on login nodes and in CI.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure as MplFigure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import NullFormatter, NullLocator  # noqa: E402


@dataclass
class Figure:
    """One figure of the study: the drawing, the tables behind it (CSV stem -> frame) and report notes."""

    name: str
    title: str
    fig: MplFigure
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def save(self, out, dpi: int = 90) -> list[str]:
        """Write <name>.png and its CSVs into folder `out`; returns the file names written."""
        names = [f"{self.name}.png"]
        self.fig.savefig(out / names[0], dpi=dpi)
        plt.close(self.fig)
        for stem, df in self.tables.items():
            df.to_csv(out / f"{stem}.csv", index=False)
            names.append(f"{stem}.csv")
        return names


def fmt_params(n: float) -> str:
    if not np.isfinite(n):
        return "?"
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.0f}"


def size_colors(sizes: pd.DataFrame) -> dict[str, tuple]:
    """model_label -> colour, ordered by parameter count (viridis, so sizes read as a sequence)."""
    order = sizes.drop_duplicates("model_label").sort_values("n_params", kind="stable")["model_label"].tolist()
    cmap = plt.get_cmap("viridis")
    return {lab: cmap(0.9 * i / max(1, len(order) - 1)) for i, lab in enumerate(order)}


def size_label(label: str, n_params: float) -> str:
    return f"{label} ({fmt_params(n_params)})"


def grid(n: int, ncols: int = 3, w: float = 4.4, h: float = 3.4, nrows: int | None = None):
    """A figure with n panels (or nrows x ncols); unused axes are hidden. Returns (fig, [axes])."""
    n = max(1, n)
    if nrows is None:
        ncols = min(ncols, n)
        nrows = -(-n // ncols)
    fw, fh = w * ncols, h * nrows + 0.5
    # fixed margins in inches instead of tight_layout, which costs about half a second per panel
    fig, axes = plt.subplots(nrows, ncols, figsize=(fw, fh), squeeze=False,
                             gridspec_kw={"left": 0.8 / fw, "right": 1 - 0.25 / fw, "bottom": 0.65 / fh,
                                          "top": 1 - 0.75 / fh, "wspace": 0.35, "hspace": 0.6})
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat


def panel_title(key: tuple, multi_sweep: bool) -> str:
    sweep, task, attack = key
    return f"{sweep}: {task} / {attack}" if multi_sweep else f"{task} / {attack}"


def note(ax, text: str) -> None:
    """Say in the panel why it has nothing to draw (the axes keep their labels)."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9, wrap=True,
            bbox={"boxstyle": "round", "fc": "#f3f3f3", "ec": "#999999"})


def finish(fig: MplFigure, title: str) -> MplFigure:
    fig.suptitle(title)
    return fig


def log_axis(ax, which: str = "x") -> None:
    """Log scale with unlabelled minor ticks: labelled minor ticks overlap on short ranges."""
    getattr(ax, f"set_{which}scale")("log")
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_minor_formatter(NullFormatter())


def size_axis(ax, n_params, labels=None) -> None:
    """Log x axis of parameter counts, ticked at the sizes themselves (sizes often span under a decade)."""
    log_axis(ax, "x")
    ticks = sorted({float(n) for n in n_params if np.isfinite(n) and n > 0})
    if ticks:
        ax.set_xticks(ticks, [fmt_params(t) for t in ticks], fontsize=7, rotation=45 if len(ticks) > 5 else 0)
        ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("model parameters")


def legend(ax, **kw) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=7, **kw)


MANY_SIZES = 4


def size_legends(fig: MplFigure, axes: list, runs: pd.DataFrame, **kw) -> None:
    """Few sizes: a legend in each panel (with its per-size numbers). Many: one legend of sizes for the whole
    figure, on its right, so that panels stay readable (the numbers are in the CSV and the report)."""
    sizes = runs.drop_duplicates("model_label").sort_values("n_params", kind="stable")
    if len(sizes) <= MANY_SIZES:
        for ax in axes:
            legend(ax, **kw)
        return
    colors = size_colors(runs)
    handles = [Line2D([], [], color=colors[lab], marker="o", ms=4, label=size_label(lab, n))
               for lab, n in sizes[["model_label", "n_params"]].itertuples(index=False)]
    w = fig.get_figwidth()
    fig.set_figwidth(w + 1.9)  # widen the figure for the legend rather than squeeze the panels
    axes[0].get_subplotspec().get_gridspec().update(left=0.8 / (w + 1.9), right=(w - 0.25) / (w + 1.9))
    fig.legend(handles=handles, loc="center right", fontsize=8, title="model size")
