"""`hpcrobust export FILE... --out DIR`: the tidy tables of `analysis.load`, as Parquet or CSV files.

The same files and merge rules as `hpcrobust analyze` (loader.py), written one file per table so that pandas,
polars, R (arrow::read_parquet, readr::read_csv) or a spreadsheet read them directly:

    runs       one row per run: sweep, task, model, size, seed, pretraining compute, training attack
    rounds     one row per committed (run, round): every round scalar, where it ran and its device-hours
    attacks    one row per (run, round, attack) the attack ran in: final ASR, accuracy before/after, attack and
               defense compute (a round an attack skipped, attacks.N.rounds, has no row)
    asr        one row per (run, round, attack, iteration): reference (asr) and cumulative (asr_cum) ASR, attack FLOPs
    transfer   one row per (round, attack, source run, target run): transfer ASR
    sweeps     one row per sweep: its label, experiment name, identity and files
    attempts   one row per attempt of each file: when, hosts, devices, code versions, device-hours

Every input is read (and refused in one line when unusable) before anything is written; each table is
written to a temporary name and renamed, so a folder never holds a half-written table.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from hpcrobust.analysis.loader import Results, load
from hpcrobust.errors import UserError

TABLES = ("runs", "rounds", "attacks", "asr", "transfer", "sweeps", "attempts")
FORMATS = ("parquet", "csv")


@dataclass
class Export:
    out: Path
    files: dict[str, tuple[str, int]] = field(default_factory=dict)  # table -> (file name, rows)


def check_folder(out: Path) -> None:
    """The folder is one, or can become one: found before any input is read."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"--out {out}: cannot create it, {parent} is not a folder")


def sweeps_table(res: Results) -> pd.DataFrame:
    return pd.DataFrame([{"sweep": s.label, "experiment": s.config.get("experiment") or "", "sweep_key": s.key,
                          "n_runs": len(s.run_names), "files": ";".join(str(p) for p in s.files)}
                         for s in res.sweeps])


def tables(res: Results) -> dict[str, pd.DataFrame]:
    return {"runs": res.runs, "rounds": res.rounds, "attacks": res.attacks, "asr": res.asr,
            "transfer": res.transfer, "sweeps": sweeps_table(res), "attempts": res.attempts}


def _write(df: pd.DataFrame, path: Path, fmt: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        if fmt == "parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def export(paths: list[str | Path], out: str | Path, fmt: str = "parquet") -> Export:
    """Read and merge `paths` (as `analyze` does) and write every tidy table into folder `out`."""
    if fmt not in FORMATS:
        raise UserError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    out = Path(out).expanduser()
    check_folder(out)
    res = load(paths)
    done = Export(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, df in tables(res).items():
            fname = f"{name}.{fmt}"
            _write(df, out / fname, fmt)
            done.files[name] = (fname, len(df))
    except OSError as exc:
        raise UserError(f"--out {out}: cannot write there ({exc.strerror or type(exc).__name__})") from None
    return done
