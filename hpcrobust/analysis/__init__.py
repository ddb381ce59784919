"""Analysis of result files: tidy tables, the paper's figures, and `hpcrobust analyze`'s report.

    res = load(["results.h5"])          # runs, rounds, attacks, asr, transfer DataFrames
    asr_vs_size(res).save(Path("out"))  # one figure: PNG + CSV
    analyze(["results.h5"], "report/")  # everything, with report.md
    export(["results.h5"], "tables/")   # the tidy tables as Parquet (or CSV) files

Names are imported lazily, so `hpcrobust.analysis.cli` (loaded by every `hpcrobust` command to
build its parser) does not pull in matplotlib and pandas.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "load": "loader", "Results": "loader",
    "Figure": "plotting",
    "analyze": "report", "figures": "report", "export": "tidy",
    "asr_vs_size": "figures_attack", "attack_scaling": "figures_attack", "attack_scaling_slopes": "figures_attack",
    "asr_vs_size_by_round": "figures_attack", "transfer_heatmap": "figures_attack",
    "advtrain_rounds": "figures_defense", "advtrain_defense": "figures_defense",
    "advtrain_transfer": "figures_defense", "offense_defense": "figures_defense",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"hpcrobust.analysis.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'hpcrobust.analysis' has no attribute {name!r}")
