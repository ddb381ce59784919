"""Anthropic's HH-RLHF preference pairs as the paper's Helpful / Harmless classification task.

Input: HH-RLHF-style JSONL (optionally gzipped), one record per line with a `chosen` and a `rejected`
conversation, as in `helpful-base/` and `harmless-base/` of Anthropic/hh-rlhf (train.jsonl.gz, test.jsonl.gz).
Each split is shuffled with `numpy.random.default_rng(seed)` (what `datasets`' `shuffle(seed=0)` does in the
reference); then the record at even position k shows the chosen conversation first (label 0, " FIRST") and the
one at odd k the rejected one first (label 1, " SECOND"), so the labels are balanced. The content is
"Conversation 1\\n---\\n{first}\\n---\\nConversation 2\\n---\\n{second}\\n---\\n"; instructions and answer prompt
are the task's (tasks/specs.py). Long pairs are not removed here: a sweep drops what does not fit its models.

Output: JSONL our file tasks read, with `text`, `label` and `split` (train; validation from the source's test
split, as the reference does).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

from hpcrobust.errors import UserError

SPLITS = {"train": "train", "test": "validation"}  # source file stem -> our split
SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")


def pair_content(first: str, second: str) -> str:
    return f"Conversation 1\n---\n{first}\n---\nConversation 2\n---\n{second}\n---\n"


def read_pairs(path: Path) -> list[tuple[str, str]]:
    """(chosen, rejected) per record; any malformed record is one line naming the file and the line."""
    opener = gzip.open if path.name.endswith(".gz") else open
    pairs = []
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    raise UserError(f"{path}: line {n} is not valid JSON") from None
                if not isinstance(rec, dict) or not all(isinstance(rec.get(k), str) for k in ("chosen", "rejected")):
                    raise UserError(f"{path}: line {n} lacks a 'chosen' and a 'rejected' conversation (strings)")
                pairs.append((rec["chosen"], rec["rejected"]))
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot be read as (gzipped) UTF-8 JSONL: {exc}") from None
    if not pairs:
        raise UserError(f"{path}: no records")
    return pairs


def to_records(pairs: list[tuple[str, str]], split: str, seed: int) -> list[dict]:
    """The reference's mapping: shuffled, then chosen first at even positions (label 0), second at odd (1)."""
    out = []
    for k, i in enumerate(np.random.default_rng(seed).permutation(len(pairs)).tolist()):
        chosen, rejected = pairs[i]
        first, second = (chosen, rejected) if k % 2 == 0 else (rejected, chosen)
        rec = {"text": pair_content(first, second), "label": k % 2}
        if split:
            rec["split"] = split
        out.append(rec)
    return out


def _source_files(src: Path) -> dict[str, Path]:
    """{our split: file}: a folder's train/test files, or one file (no split: the loader's shuffle splits it)."""
    if src.is_file():
        return {"": src}
    if not src.is_dir():
        raise UserError(f"{src}: no such file or folder")
    found = {}
    for stem, split in SPLITS.items():
        files = [src / f"{stem}{s}" for s in SUFFIXES if (src / f"{stem}{s}").is_file()]
        if files:
            found[split] = files[0]
    if "train" not in found:
        raise UserError(f"{src}: no train.jsonl or train.jsonl.gz (an HH-RLHF folder such as helpful-base/)")
    return found


def convert(src: Path, out: Path, seed: int = 0) -> dict[str, int]:
    """Write `out` (JSONL) from an HH-RLHF folder or file; returns the records per split."""
    files = _source_files(src)
    counts = {}
    records = []
    for split, path in files.items():
        part = to_records(read_pairs(path), split, seed)
        counts[split or "all"] = len(part)
        records += part
    if out.exists() and out.is_dir():
        raise UserError(f"{out}: is a folder; give the JSONL file to write")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    with tmp.open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    tmp.replace(out)
    return counts
