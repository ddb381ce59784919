"""Public datasets in the folder layouts they are published in, read as a file task's `Table`.

- IMDB's `aclImdb/` (Maas et al.): `train/{pos,neg}/*.txt` and `test/{pos,neg}/*.txt`, one review per file;
  label 1 for pos, 0 for neg. The splits are `train` and `test` (the reference validates on IMDB's test split).
- Enron spam as published by Metsis et al. (`enron1/ ... enron6/`, each with `ham/` and `spam/` of one email
  per .txt file), or one such folder: label 1 for spam, 0 for ham; one table (no split).

Files are read in name order. Each IMDB split is then shuffled with `numpy.random.default_rng(task.seed)`
(what `datasets`' `shuffle(seed=...)` does; the reference shuffles with seed 0), so a split is not sorted by
label; Enron's one table is shuffled and split by the loader like any file without splits. Emails that
are not UTF-8 are read as Latin-1, as the Enron files need.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hpcrobust.errors import UserError
from hpcrobust.tasks.hf import Table


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _texts(folder: Path, where: str) -> list[str]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix == ".txt")
    if not files:
        raise UserError(f"{where}: no .txt files in {folder}")
    return [_read_text(p) for p in files]


def _shuffled(records: list[dict], seed: int) -> list[dict]:
    return [records[i] for i in np.random.default_rng(seed).permutation(len(records)).tolist()]


def _imdb_root(path: Path) -> Path | None:
    for root in (path, path / "aclImdb"):
        if (root / "train" / "pos").is_dir() or (root / "train" / "neg").is_dir():
            return root
    return None


def _enron_folders(path: Path) -> list[Path]:
    """`path` itself when it holds ham/ and spam/, else its subfolders that do (enron1 ... enron6)."""
    if (path / "ham").is_dir() or (path / "spam").is_dir():
        return [path]
    return sorted(p for p in path.iterdir() if p.is_dir() and ((p / "ham").is_dir() or (p / "spam").is_dir()))


def read_layout(path: Path, text: str, label: str, seed: int) -> Table | None:
    """The folder as a Table if it is laid out as aclImdb or Enron spam; None for any other folder."""
    where = str(path)
    root = _imdb_root(path)
    if root is not None:
        splits = {}
        for split in ("train", "test"):
            records = []
            for name, value in (("neg", 0), ("pos", 1)):
                folder = root / split / name
                if not folder.is_dir():
                    raise UserError(f"{where}: an aclImdb folder needs {split}/{name}/ (one review per .txt file)")
                records += [{text: t, label: value} for t in _texts(folder, where)]
            splits[split] = _shuffled(records, seed)
        return Table(where, [text, label], splits)
    enron = _enron_folders(path)
    if not enron:
        return None
    for folder in enron:
        if not ((folder / "ham").is_dir() and (folder / "spam").is_dir()):
            raise UserError(f"{where}: an Enron spam folder needs ham/ and spam/ side by side ({folder})")
    records = []
    for folder in enron:
        for name, value in (("ham", 0), ("spam", 1)):
            records += [{text: t, label: value} for t in _texts(folder / name, where)]
    return Table(where, [text, label], {"": records})  # one table: the loader's seeded shuffle splits it
