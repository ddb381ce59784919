"""A task's settings: which examples to generate or read, and where a file task's columns are."""

from __future__ import annotations

from dataclasses import dataclass

from hpcrobust.errors import UserError
from hpcrobust.fields import setting
from hpcrobust.store.identity import TASK_SOURCE_DEFAULTS
from hpcrobust.tasks.generated import GENERATORS
from hpcrobust.tasks.specs import SPECS

GENERATED_TASKS = tuple(GENERATORS)
FILE_TASKS = tuple(SPECS)
TASKS = GENERATED_TASKS + FILE_TASKS


@dataclass
class TaskConfig:
    name: str = setting("password_match", choices=TASKS, doc="which task to fine-tune and attack")
    path: str = setting("", doc="file task: a JSONL, CSV, Parquet or Arrow file, a `save_to_disk` folder, IMDB's"
                        " `aclImdb/` or Enron's `ham/` + `spam/` folders (refused for generated tasks)")
    dataset: str = setting("", doc="file task: a Hugging Face dataset id already in the local HF cache (read"
                           " offline; instead of task.path)")
    revision: str = setting("", doc="task.dataset: branch, tag or commit in the cache (default: main)")
    text_column: str = setting("text", doc="file task: column with the example's text")
    label_column: str = setting("label", doc="file task: column with the label (0 or 1)")
    split_column: str = setting("split", doc="file task: column with train/validation per record (optional;"
                                " without it a seeded shuffle takes n_val records)")
    train_split: str = setting("train", doc="a dataset with named splits: the training split")
    val_split: str = setting("validation", doc="a dataset with named splits: the held-out split")
    n_train: int = setting(4000, lo=2, hi=10**7, doc="training examples")
    n_val: int = setting(200, lo=1, hi=10**7, doc="held-out examples for clean accuracy and attacks")
    seed: int = setting(0, lo=0, doc="seed of the data itself (same examples for every run)")
    max_content_tokens: int = setting(0, lo=0, hi=10**7, doc="examples whose content is longer than this many"
                                      " tokens (under any model's tokenizer) are dropped, never cut; 0: only the"
                                      " context decides (an example must fit every model's context with the"
                                      " longest attack; counted as n_dropped_train / n_dropped_val)")

    def validate(self) -> None:
        if self.name in FILE_TASKS:
            if not self.path and not self.dataset:
                raise UserError(f"task.path: task '{self.name}' reads a file or a dataset; set task.path (JSONL,"
                                " CSV, Parquet, Arrow or a save_to_disk folder) or task.dataset (an id in the HF"
                                " cache)")
            if self.path and self.dataset:
                raise UserError("task.dataset: give task.path or task.dataset, not both")
        if self.name in GENERATED_TASKS:
            for key in ("path", "dataset"):
                if getattr(self, key):
                    raise UserError(f"task.{key}: task '{self.name}' is generated, not read from a file; remove"
                                    f" task.{key} (file tasks: {', '.join(FILE_TASKS)})")
            for key, default in TASK_SOURCE_DEFAULTS.items():
                if key not in ("dataset", "revision") and getattr(self, key) != default:
                    raise UserError(f"task.{key}: task '{self.name}' is generated and has no columns or splits;"
                                    f" remove task.{key}")
        if self.revision and not self.dataset:
            raise UserError("task.revision: only with task.dataset (a revision of a dataset in the HF cache)")
        for key in ("text_column", "label_column"):
            if not getattr(self, key):
                raise UserError(f"task.{key}: empty column name")
