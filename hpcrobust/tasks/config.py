"""A task's settings: which examples to generate or read."""

from __future__ import annotations

from dataclasses import dataclass

from hpcrobust.errors import UserError
from hpcrobust.fields import setting
from hpcrobust.tasks.files import SPECS
from hpcrobust.tasks.generated import GENERATORS

GENERATED_TASKS = tuple(GENERATORS)
FILE_TASKS = tuple(SPECS)
TASKS = GENERATED_TASKS + FILE_TASKS


@dataclass
class TaskConfig:
    name: str = setting("password_match", choices=TASKS, doc="which task to fine-tune and attack")
    path: str = setting("", doc="JSONL or CSV file for spam/imdb/helpful/harmless (refused for generated tasks)")
    n_train: int = setting(4000, lo=2, doc="training examples")
    n_val: int = setting(200, lo=1, doc="held-out examples for clean accuracy and attacks")
    seed: int = setting(0, lo=0, doc="seed of the data itself (same examples for every run)")
    max_content_tokens: int = setting(256, lo=8, doc="an example's content is cut to this many tokens (the"
                                      " generated tasks' content is shorter)")

    def validate(self) -> None:
        if self.name in FILE_TASKS and not self.path:
            raise UserError(f"task.path: task '{self.name}' reads a JSONL or CSV file; set task.path")
        if self.name in GENERATED_TASKS and self.path:
            raise UserError(f"task.path: task '{self.name}' is generated, not read from a file; remove task.path"
                            f" (file tasks: {', '.join(FILE_TASKS)})")
