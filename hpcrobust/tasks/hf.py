"""File tasks read through the `datasets` library: an id in the local HF cache, `save_to_disk` folders,
Parquet and Arrow files.

Nothing is downloaded. A dataset id is looked up in the Hugging Face hub cache (`HF_HUB_CACHE`, under
`HF_HOME`) at the requested revision, exactly as `snapshot_download(..., local_files_only=True)` finds it,
and that snapshot folder is read like any local dataset repository. Loading goes through a throw-away
`datasets` cache, so reading a task never writes into the user's caches.

Every reader returns a `Table`: column names and, per named split, the records of the columns asked for.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hpcrobust.errors import UserError

ARROW_SUFFIXES = (".arrow", ".feather", ".ipc")
PARQUET_SUFFIXES = (".parquet", ".pq")


@dataclass
class Table:
    """What a source holds: its columns, and its records per split ('' for a source without named splits)."""

    where: str  # how errors name the source
    columns: list[str]
    splits: dict[str, list[dict]]


def _quiet() -> None:
    import datasets

    datasets.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _table(where: str, data, wanted: list[str]) -> Table:
    """A `datasets.Dataset` or `DatasetDict` as records of the wanted columns that exist."""
    from datasets import DatasetDict

    parts = dict(data) if isinstance(data, DatasetDict) else {"": data}
    columns = list(next(iter(parts.values())).column_names) if parts else []
    keep = [c for c in wanted if c in columns]
    splits = {}
    for name, ds in parts.items():
        missing = [c for c in keep if c not in ds.column_names]
        if missing:
            raise UserError(f"{where}: split '{name}' lacks column '{missing[0]}'")
        splits[name] = ds.select_columns(keep).to_list()
    return Table(where, columns, splits)


def read_dataset_id(dataset_id: str, revision: str, wanted: list[str]) -> Table:
    """A dataset repository in the local hub cache, at `revision` (branch, tag or commit; default main)."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError

    rev = revision or "main"
    where = f"task.dataset '{dataset_id}' (revision {rev})"
    if dataset_id.count("/") > 1 or Path(dataset_id).is_absolute() or dataset_id.startswith("."):
        raise UserError(f"task.dataset: '{dataset_id}' is not a dataset id (owner/name); give a folder or file"
                        f" as task.path")
    _quiet()
    try:
        folder = snapshot_download(dataset_id, repo_type="dataset", revision=rev, local_files_only=True)
    except HFValidationError as exc:
        raise UserError(f"task.dataset: '{dataset_id}' is not a valid dataset id: {_first_line(exc)}") from None
    except Exception:  # noqa: BLE001 - every failure here means the same thing to the user: not in the cache
        raise UserError(f"{where} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}); nothing is"
                        f" downloaded: fetch it once where there is network (`hf download --repo-type dataset"
                        f" {dataset_id} --revision {rev}`) and point HF_HOME or HF_HUB_CACHE at that cache") from None
    return _load_repo_folder(Path(folder), where, wanted)


def _load_repo_folder(folder: Path, where: str, wanted: list[str]) -> Table:
    """A folder laid out like a dataset repository (data files, optional README configs), read offline."""
    import datasets

    with tempfile.TemporaryDirectory(prefix="hpcrobust-datasets-") as cache:
        try:
            data = datasets.load_dataset(str(folder), cache_dir=cache, keep_in_memory=True)
        except Exception as exc:  # noqa: BLE001 - datasets raises many types for unreadable repositories
            raise UserError(f"{where}: cannot be read as a dataset ({folder}): {_first_line(exc)}") from None
        return _table(where, data, wanted)


def read_path(path: Path, wanted: list[str]) -> Table:
    """A `save_to_disk` folder, a dataset repository folder, or one Parquet or Arrow file."""
    _quiet()
    where = str(path)
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            import datasets

            try:
                data = datasets.load_from_disk(str(path), keep_in_memory=True)
            except Exception as exc:  # noqa: BLE001
                raise UserError(f"{where}: not a readable save_to_disk folder: {_first_line(exc)}") from None
            return _table(where, data, wanted)
        return _load_repo_folder(path, where, wanted)
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        return _table(where, _parquet(path), wanted)
    if suffix in ARROW_SUFFIXES:
        return _table(where, _arrow(path), wanted)
    raise UserError(f"{path}: unsupported file type '{suffix}'")


def _parquet(path: Path):
    import datasets
    import pyarrow.parquet as pq

    try:
        return datasets.Dataset(pq.read_table(str(path)))
    except Exception as exc:  # noqa: BLE001 - pyarrow's errors for a damaged file vary
        raise UserError(f"{path}: not a readable Parquet file: {_first_line(exc)}") from None


def _arrow(path: Path):
    """An Arrow stream (what `datasets` writes) or an Arrow IPC/Feather file."""
    import datasets
    import pyarrow as pa

    try:
        return datasets.Dataset.from_file(str(path), in_memory=True)
    except Exception:  # noqa: BLE001 - not a stream: try the IPC file format
        pass
    try:
        with pa.memory_map(str(path)) as src:
            return datasets.Dataset(pa.ipc.open_file(src).read_all())
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"{path}: not a readable Arrow file: {_first_line(exc)}") from None

