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


def load_attacks(path: str | Path) -> pd.DataFrame:
    """One row per committed (run, round, attack): final ASR, iterations, compute, and whether the
    attack was an ensemble (one string for every size of a seed)."""
    cfg = stored_config(path)
    kinds = {a["name"]: a for a in cfg.get("attacks", [])}
    rows = []
    with open_results(path) as f:
        for run, g in f.get(RUNS, {}).items():
            for r, rg in g["rounds"].items():
                if not is_committed(rg) or "attacks" not in rg:
                    continue
                for name, ag in rg["attacks"].items():
                    asr = ag["asr"][()]
                    a = kinds.get(name, {})
                    rows.append({"run": run, "model_label": g.attrs.get("model_label"),
                                 "seed": int(g.attrs.get("seed", -1)), "round": int(r), "attack": name,
                                 "type": a.get("type"), "ensemble": bool(a.get("ensemble", False)),
                                 "iterations": len(asr) - 1, "asr": float(asr[-1]),
                                 "n_correct_before": int(ag["correct_before"][()].sum()),
                                 "flops_nominal": float(ag["flops_nominal"][()].sum()),
                                 "flops_actual": float(ag["flops_actual"][()].sum())})
    return pd.DataFrame(rows)


def load_transfer(path: str | Path) -> pd.DataFrame:
    """The cross-size transfer matrices, tidy: one row per committed (round, attack, source, target)."""
    rows = []
    with open_results(path) as f:
        for r, tg in f.get(TRANSFER, {}).items():
            if not is_committed(tg):
                continue
            for attack, ag in tg.items():
                runs = decode_text(ag["runs"][()])
                mat = ag["asr"][()]
                for i, src in enumerate(runs):
                    for j, tgt in enumerate(runs):
                        rows.append({"round": int(r), "attack": attack, "source": src, "target": tgt,
                                     "asr": float(mat[i, j])})
    return pd.DataFrame(rows)
