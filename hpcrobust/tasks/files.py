"""File-backed binary tasks (Spam, IMDB, Helpful, Harmless): from JSONL or CSV, or through `datasets`.

A source is `task.path` (a JSONL, CSV, Parquet or Arrow file, or a `save_to_disk` / dataset-repository
folder) or `task.dataset` (an id in the local HF cache, at `task.revision`; see hf.py). Every record has
a text column and a label column (0 or 1), named by `task.text_column` / `task.label_column`. Records go
to training or validation by the source's named splits (`task.train_split` / `task.val_split`), else by
an optional split column (`train` / `validation`), else a seeded shuffle puts `n_val` in validation.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from hpcrobust.errors import UserError
from hpcrobust.fields import shown
from hpcrobust.rng import stream
from hpcrobust.tasks.base import Example, TaskData
from hpcrobust.tasks.config import TaskConfig
from hpcrobust.tasks.generated import ANSWER_PROMPT
from hpcrobust.tasks.hf import ARROW_SUFFIXES, PARQUET_SUFFIXES, Table, read_dataset_id, read_path
from hpcrobust.tasks.layouts import read_layout
from hpcrobust.tasks.specs import SPECS

TEXT_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")
VAL_NAMES = ("validation", "val", "test")


MAX_FIELD = 16 << 20  # bytes in one CSV field


def _read_records(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".json"):
            records = []
            with path.open(encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    if line.strip():
                        try:
                            rec = json.loads(line)
                        except json.JSONDecodeError:
                            raise UserError(f"{path}: line {n} is not valid JSON") from None
                        if not isinstance(rec, dict):
                            raise UserError(f"{path}: line {n} is not a JSON object")
                        records.append(rec)
            return records
        csv.field_size_limit(MAX_FIELD)  # csv's own default (128 KiB) is shorter than some conversations
        with path.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
            try:
                return list(reader)
            except csv.Error as exc:
                raise UserError(f"{path}: the record after line {reader.line_num}: {exc}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None


def _label(value: object, where: str, n: int) -> int:
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return int(value.strip())
    if isinstance(value, float) and value in (0.0, 1.0):
        return int(value)
    if isinstance(value, int) and value in (0, 1):
        return value
    raise UserError(f"{where}: record {n}: label {shown(value)} is not 0 or 1")


def read_source(cfg: TaskConfig) -> Table:
    """The task's records, from whichever source the config names (user errors: one line)."""
    wanted = [cfg.text_column, cfg.label_column, cfg.split_column]
    if cfg.dataset:
        return read_dataset_id(cfg.dataset, cfg.revision, wanted)
    path = Path(cfg.path).expanduser()
    if path.is_dir():
        layout = read_layout(path, cfg.text_column, cfg.label_column, cfg.seed)  # aclImdb/, Enron ham/ spam/
        return layout if layout is not None else read_path(path, wanted)
    if not path.is_file():
        raise UserError(f"task.path: file not found: {path}")
    if path.suffix.lower() in TEXT_SUFFIXES:
        records = _read_records(path)
        columns = list(records[0]) if records else []
        return Table(str(path), columns, {"": records})
    if path.suffix.lower() in PARQUET_SUFFIXES + ARROW_SUFFIXES:
        return read_path(path, wanted)
    raise UserError(f"{path}: unsupported file type '{path.suffix}' (use .jsonl, .csv, .parquet, .arrow or a"
                    f" save_to_disk folder)")


def _examples(records: list[dict], cfg: TaskConfig, where: str, offset: int = 0) -> list[Example]:
    instructions = SPECS[cfg.name][0]
    out = []
    for n, rec in enumerate(records, offset + 1):
        if cfg.text_column not in rec or cfg.label_column not in rec:
            raise UserError(f"{where}: record {n}: missing '{cfg.text_column}' or '{cfg.label_column}'")
        text = rec[cfg.text_column]
        if not isinstance(text, str):
            raise UserError(f"{where}: record {n}: {cfg.text_column} is not a string ({type(text).__name__})")
        out.append(Example(instructions, text, ANSWER_PROMPT, _label(rec[cfg.label_column], where, n)))
    return out


def _check_columns(table: Table, cfg: TaskConfig) -> None:
    for key, col in (("text_column", cfg.text_column), ("label_column", cfg.label_column)):
        if col not in table.columns:
            have = ", ".join(table.columns) or "none"
            raise UserError(f"{table.where}: missing column '{col}' (columns: {have}); set task.{key}")


def _split(table: Table, cfg: TaskConfig) -> tuple[list[Example], list[Example], bool]:
    """(train, validation, shared): named splits first, then a split column, then a seeded shuffle (one shared
    table, see TaskData.shared)."""
    splits, where = table.splits, table.where
    named = [s for s in splits if s]
    val_split = cfg.val_split
    if val_split == VAL_NAMES[0] and val_split not in splits and "test" in splits:
        val_split = "test"  # the reference validates on the source's test split (IMDB, Enron spam, HH-RLHF)
    if val_split in splits or len(named) > 1:
        for key, name in (("train_split", cfg.train_split), ("val_split", val_split)):
            if name not in splits:
                raise UserError(f"{where}: no split '{name}' (splits: {', '.join(named)}); set task.{key}")
        train = _examples(splits[cfg.train_split], cfg, f"{where} [{cfg.train_split}]")
        return train, _examples(splits[val_split], cfg, f"{where} [{val_split}]"), False
    records = next(iter(splits.values()), [])  # one table (a single named split counts as one table)
    if not records:
        raise UserError(f"{where}: no records")
    examples = _examples(records, cfg, where)
    labels = [str(rec.get(cfg.split_column, "") or "") for rec in records] if cfg.split_column else []
    if any(labels):
        train = [e for e, s in zip(examples, labels, strict=True) if s == "train"]
        val = [e for e, s in zip(examples, labels, strict=True) if s in VAL_NAMES]
        return train, val, False
    order = stream(cfg.seed, "task", cfg.name).permutation(len(examples)).tolist()
    return [], [examples[i] for i in order], True


def load_file_task(cfg: TaskConfig) -> TaskData:
    """The task's pool: every record of the source, split and ordered (tasks.fit picks those the sweep uses)."""
    table = read_source(cfg)
    if not table.columns:
        raise UserError(f"{table.where}: no records")
    _check_columns(table, cfg)
    train, val, shared = _split(table, cfg)
    n_tr, n_va = (max(0, len(val) - cfg.n_val), min(len(val), cfg.n_val)) if shared else (len(train), len(val))
    if n_tr < cfg.n_train or n_va < cfg.n_val:  # never fewer examples than asked for, silently
        raise UserError(f"{table.where}: has {n_tr} training and {n_va} validation records; task.n_train"
                        f" is {cfg.n_train} and task.n_val {cfg.n_val} (lower them, or add records)")
    return TaskData(cfg.name, SPECS[cfg.name][1], train, val, shared=shared)
