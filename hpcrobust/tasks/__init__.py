"""Tasks: generators and file loaders of labelled examples, and where an attack may go."""

from __future__ import annotations

from hpcrobust.config import TaskConfig
from hpcrobust.tasks.base import Example, TaskData
from hpcrobust.tasks.files import load_file_task
from hpcrobust.tasks.generated import password_match, word_length


def load_task(cfg: TaskConfig) -> TaskData:
    if cfg.name == "password_match":
        return password_match(cfg.n_train, cfg.n_val, cfg.seed)
    if cfg.name == "word_length":
        return word_length(cfg.n_train, cfg.n_val, cfg.seed)
    return load_file_task(cfg.name, cfg.path, cfg.n_train, cfg.n_val, cfg.seed)


__all__ = ["Example", "TaskData", "load_task"]
