"""Tasks: generators and file loaders of labelled examples, and where an attack may go.

A new generated task is one function in `generated.py` (registered in its GENERATORS); a new
file-backed task is one entry in `specs.py`'s SPECS. Both become `task.name` choices. File tasks read
JSONL/CSV themselves and everything else (HF cache ids, save_to_disk folders, Parquet, Arrow) through
`datasets` (hf.py). `load_pool` reads every record; `fit.fit_task` keeps the first n_train / n_val that fit
every model's context (dropped, never cut).
"""

from __future__ import annotations

from hpcrobust.tasks.base import Example, TaskData
from hpcrobust.tasks.config import TaskConfig
from hpcrobust.tasks.files import load_file_task
from hpcrobust.tasks.fit import Budget, Limit, fit_task
from hpcrobust.tasks.generated import GENERATORS


def load_pool(cfg: TaskConfig) -> TaskData:
    """Every example the source offers, split and in order (a generated task makes exactly n_train / n_val)."""
    if cfg.name in GENERATORS:
        return GENERATORS[cfg.name](cfg.n_train, cfg.n_val, cfg.seed)
    return load_file_task(cfg)


def load_task(cfg: TaskConfig, limits: list[Limit] | None = None, budget: Budget | None = None) -> TaskData:
    """The first n_train / n_val examples that fit `limits` (none given: the first ones, nothing dropped)."""
    return fit_task(load_pool(cfg), cfg.n_train, cfg.n_val, limits or [], budget or Budget())


__all__ = ["Budget", "Example", "Limit", "TaskConfig", "TaskData", "load_pool", "load_task"]
