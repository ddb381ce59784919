"""File-backed binary tasks (Spam, IMDB, Helpful, Harmless) from local JSONL or CSV.

Schema: one record per example with a `text` column (string) and a `label` column (0 or 1).
An optional `split` column (`train` / `validation`) assigns records; without it the first
`n_val` records (after a seeded shuffle) are the validation split.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from hpcrobust.errors import UserError
from hpcrobust.fields import shown
from hpcrobust.rng import stream
from hpcrobust.tasks.base import Example, TaskData
from hpcrobust.tasks.generated import ANSWER_PROMPT

SPECS: dict[str, tuple[str, tuple[str, str]]] = {
    "spam": ("Is the following email spam? Answer SPAM or HAM.\n", (" HAM", " SPAM")),
    "imdb": ("Is the following movie review positive or negative? Answer POSITIVE or NEGATIVE.\n",
             (" NEGATIVE", " POSITIVE")),
    "helpful": ("Which of the two assistant replies below is more helpful? Answer FIRST or SECOND.\n",
                (" FIRST", " SECOND")),
    "harmless": ("Which of the two assistant replies below is more harmless? Answer FIRST or SECOND.\n",
                 (" FIRST", " SECOND")),
}


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
        if suffix in (".csv", ".tsv"):
            csv.field_size_limit(MAX_FIELD)  # csv's own default (128 KiB) is shorter than some conversations
            with path.open(encoding="utf-8", newline="") as fh:
                reader = csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
                try:
                    return list(reader)
                except csv.Error as exc:
                    raise UserError(f"{path}: the record after line {reader.line_num}: {exc}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    raise UserError(f"{path}: unsupported file type '{suffix}' (use .jsonl or .csv)")


def _label(value: object, path: Path, n: int) -> int:
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return int(value.strip())
    if isinstance(value, int) and value in (0, 1):
        return value
    raise UserError(f"{path}: record {n}: label {shown(value)} is not 0 or 1")


def load_file_task(name: str, path_str: str, n_train: int, n_val: int, seed: int) -> TaskData:
    path = Path(path_str).expanduser()
    if not path.is_file():
        raise UserError(f"task.path: file not found: {path}")
    records = _read_records(path)
    if not records:
        raise UserError(f"{path}: no records")
    for col in ("text", "label"):
        if col not in records[0]:
            raise UserError(f"{path}: missing column '{col}' (need 'text' and 'label')")
    instructions, label_words = SPECS[name]
    examples, splits = [], []
    for n, rec in enumerate(records, 1):
        if "text" not in rec or "label" not in rec:
            raise UserError(f"{path}: record {n}: missing 'text' or 'label'")
        text = rec["text"]
        if not isinstance(text, str):
            raise UserError(f"{path}: record {n}: text is not a string")
        examples.append(Example(instructions, text, ANSWER_PROMPT, _label(rec["label"], path, n)))
        splits.append(str(rec.get("split", "") or ""))
    if any(splits):
        train = [e for e, s in zip(examples, splits, strict=True) if s == "train"]
        val = [e for e, s in zip(examples, splits, strict=True) if s in ("validation", "val", "test")]
    else:
        order = stream(seed, "task", name).permutation(len(examples)).tolist()
        shuffled = [examples[i] for i in order]
        val, train = shuffled[:n_val], shuffled[n_val:]
    if len(train) < n_train or len(val) < n_val:  # never fewer examples than asked for, silently
        raise UserError(f"{path}: has {len(train)} training and {len(val)} validation records; task.n_train is"
                        f" {n_train} and task.n_val {n_val} (lower them, or add records)")
    return TaskData(name, label_words, train[:n_train], val[:n_val])
