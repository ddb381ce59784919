"""Tasks: generators and file loaders of labelled examples, and where an attack may go.

A new generated task is one function in `generated.py` (registered in its GENERATORS); a new
file-backed task is one entry in `specs.py`'s SPECS. Both become `task.name` choices. File tasks read
JSONL/CSV themselves and everything else (HF cache ids, save_to_disk folders, Parquet, Arrow) through
`datasets` (hf.py).
"""

from __future__ import annotations

from hpcrobust.tasks.base import Example, TaskData
from hpcrobust.tasks.config import TaskConfig
from hpcrobust.tasks.files import load_file_task
from hpcrobust.tasks.generated import GENERATORS


def load_task(cfg: TaskConfig) -> TaskData:
    if cfg.name in GENERATORS:
        return GENERATORS[cfg.name](cfg.n_train, cfg.n_val, cfg.seed)
    return load_file_task(cfg)


__all__ = ["Example", "TaskConfig", "TaskData", "load_task"]
