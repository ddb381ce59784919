"""Reading results back: only committed records exist as far as a reader is concerned."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import yaml

from hpcrobust.errors import UserError
from hpcrobust.store.schema import COMMITTED, FORMAT, RUNS, SCHEMA_VERSION, TRANSFER, decode_text


def open_results(path: str | Path) -> h5py.File:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"results file not found: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise UserError(f"{path} is not an HDF5 file") from None
    if f.attrs.get("format") != FORMAT:
        f.close()
        raise UserError(f"{path} is an HDF5 file but not an hpcrobust results file")
    if int(f.attrs.get("schema_version", -1)) != SCHEMA_VERSION:
        ver = f.attrs.get("schema_version")
        f.close()
        raise UserError(f"{path} has schema v{ver}; this hpcrobust reads v{SCHEMA_VERSION}")
    return f


def is_committed(g: h5py.Group) -> bool:
    return int(g.attrs.get(COMMITTED, 0)) == 1


def committed_rounds(path: str | Path) -> dict[str, set[int]]:
    """{run: {rounds}} plus the key '__transfer__' for committed transfer matrices."""
    out: dict[str, set[int]] = {}
    path = Path(path)
    if not path.exists():
        return out
    with open_results(path) as f:
        for run, g in f.get(RUNS, {}).items():
            out[run] = {int(r) for r, rg in g["rounds"].items() if is_committed(rg)}
        out["__transfer__"] = {int(r) for r, g in f.get(TRANSFER, {}).items() if is_committed(g)}
    return out


def stored_config(path: str | Path) -> dict:
    with open_results(path) as f:
        return yaml.safe_load(f.attrs["config"])


def _value(ds: h5py.Dataset):
    v = ds[()]
    if isinstance(v, np.ndarray) and v.dtype.kind == "S":
        return decode_text(v)
    if isinstance(v, bytes):
        return v.decode()
    return v.item() if isinstance(v, np.generic) else v


def read_group(g: h5py.Group) -> dict:
    """Every dataset below a group, as {relative path: value}."""
    out: dict = {}

    def visit(name: str, obj) -> None:
        if isinstance(obj, h5py.Dataset):
            out[name] = _value(obj)

    g.visititems(visit)
    return out


def load(path: str | Path) -> pd.DataFrame:
    """One row per committed (run, round): run metadata and every scalar metric."""
    rows = []
    with open_results(path) as f:
        for run, g in f.get(RUNS, {}).items():
            meta = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in g.attrs.items()}
            for r, rg in g["rounds"].items():
                if not is_committed(rg):
                    continue
                row = {"run": run, **meta, "round": int(r)}
                for k, ds in rg.items():
                    if isinstance(ds, h5py.Dataset) and ds.shape == ():
                        row[k] = _value(ds)
                rows.append(row)
    df = pd.DataFrame(rows)
    if len(df):
        df = df.sort_values(["run_index", "round"]).reset_index(drop=True)
    return df
