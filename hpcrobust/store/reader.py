"""Reading results back: only committed records exist as far as a reader is concerned."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from hpcrobust.store import schema as S
from hpcrobust.store.results import ResultsFile, is_committed
from hpcrobust.store.schema import RUNS, TRANSFER, decode_text


def open_results(path: str | Path) -> AbstractContextManager[h5py.File]:
    """`with open_results(path) as f`: see ResultsFile.open (a reader sees whole commits only)."""
    return ResultsFile(path).open()


def committed_rounds(path: str | Path) -> dict[str, set[int]]:
    return ResultsFile(path).committed_rounds()


def stored_config(path: str | Path) -> dict:
    return ResultsFile(path).stored_config()


def _value(ds: h5py.Dataset):
    v = ds[()]
    if isinstance(v, np.ndarray) and v.dtype.kind == "S":
        return decode_text(v)
    if isinstance(v, bytes):
        return v.decode()
    return v.item() if isinstance(v, np.generic) else v


def _plain(v):
    if isinstance(v, bytes):
        return v.decode()
    return v.item() if isinstance(v, np.generic) else v


def load(path: str | Path) -> pd.DataFrame:
    """One row per committed (run, round): run metadata, every scalar metric, and where the round ran (its
    provenance attributes, in files that record them)."""
    rows = []
    with open_results(path) as f:
        for run, g in f.get(RUNS, {}).items():
            meta = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in g.attrs.items()}
            for r, rg in g[S.ROUNDS].items():
                if not is_committed(rg):
                    continue
                row = {"run": run, **meta, "round": int(r)}
                row.update({k: _plain(v) for k, v in rg.attrs.items() if k in S.PROVENANCE})
                for k, ds in rg.items():
                    if isinstance(ds, h5py.Dataset) and ds.shape == ():
                        row[k] = _value(ds)
                rows.append(row)
    df = pd.DataFrame(rows)
    if len(df):
        df = df.sort_values([S.RUN_INDEX, "round"]).reset_index(drop=True)
    return df


def load_attempts(path: str | Path) -> pd.DataFrame:
    """One row per committed attempt (a start of the sweep on this file): its software, hosts, devices and
    device-hours (store/schema.py ATTEMPT_ATTRS); empty for files written before attempts were recorded."""
    rows = []
    with open_results(path) as f:
        for g in f.get(S.ATTEMPTS, {}).values():
            if is_committed(g):
                rows.append({k: _plain(g.attrs[k]) for k in S.ATTEMPT_ATTRS if k in g.attrs})
    return pd.DataFrame(rows, columns=list(S.ATTEMPT_ATTRS))


def load_attacks(path: str | Path) -> pd.DataFrame:
    """One row per committed (run, round, attack) the attack ran in (attacks.N.rounds: a round it skipped has no
    row): final ASR (`asr`: the reference's, of the candidate current at
    the last iteration; `asr_cum`: flipped at any iteration), iterations, compute, and whether the
    attack was an ensemble (one string for every size of a seed) or stopped early."""
    cfg = stored_config(path)
    kinds = {a["name"]: a for a in cfg.get("attacks", [])}
    rows = []
    with open_results(path) as f:
        for run, g in f.get(RUNS, {}).items():
            for r, rg in g[S.ROUNDS].items():
                if not is_committed(rg) or S.ATTACKS not in rg:
                    continue
                for name, ag in rg[S.ATTACKS].items():
                    asr = ag[S.ASR][()]
                    a = kinds.get(name, {})
                    rows.append({"run": run, "model_label": g.attrs.get(S.MODEL_LABEL),
                                 "seed": int(g.attrs.get(S.SEED, -1)), "round": int(r), "attack": name,
                                 "type": a.get("type"), "ensemble": bool(a.get("ensemble", False)),
                                 "iterations": len(asr) - 1, "asr": float(ag[S.ASR_CURRENT][-1]),
                                 "asr_cum": float(asr[-1]), "early_stop": bool(ag[S.EARLY_STOP][()]),
                                 "n_correct_before": int(ag[S.CORRECT_BEFORE][()].sum()),
                                 "flops_nominal": float(ag[S.ATTACK_FLOPS_NOMINAL][()].sum()),
                                 "flops_actual": float(ag[S.ATTACK_FLOPS_ACTUAL][()].sum())})
    return pd.DataFrame(rows)


def load_transfer(path: str | Path) -> pd.DataFrame:
    """The cross-size transfer matrices, tidy: one row per committed (round, attack, source, target)."""
    rows = []
    with open_results(path) as f:
        for r, tg in f.get(TRANSFER, {}).items():
            if not is_committed(tg):
                continue
            for attack, ag in tg.items():
                runs = decode_text(ag[S.TRANSFER_RUNS][()])
                mat = ag[S.TRANSFER_ASR][()]
                for i, src in enumerate(runs):
                    for j, tgt in enumerate(runs):
                        rows.append({"round": int(r), "attack": attack, "source": src, "target": tgt,
                                     "asr": float(mat[i, j])})
    return pd.DataFrame(rows)
