"""What a tracker receives: a committed round read back from the results file, so the tracker shows exactly
the numbers the file holds (and nothing that a crash could leave uncommitted)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from hpcrobust.store import schema as S
from hpcrobust.store.results import ResultsFile, is_committed


@dataclass
class AttackCurve:
    asr: np.ndarray  # [n_iterations + 1], index 0 before any iteration
    flops: np.ndarray  # cumulative nominal attack FLOPs after each iteration

    @property
    def final(self) -> float:
        return float(self.asr[-1]) if len(self.asr) else float("nan")


@dataclass
class RoundRecord:
    run: str
    round: int
    scalars: dict[str, float] = field(default_factory=dict)
    attacks: dict[str, AttackCurve] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """Flat scalars of the round: every round scalar, and per attack its final ASR and total FLOPs."""
        out = dict(self.scalars)
        for name, c in self.attacks.items():
            out[f"attack/{name}/asr"] = c.final
            out[f"attack/{name}/flops"] = float(c.flops[-1]) if len(c.flops) else 0.0
            out[f"attack/{name}/iterations"] = float(len(c.asr) - 1)
        return out


def tracker_run_id(science_hash: str, results_path: str | Path, run: str) -> str:
    """Stable id of one run's tracker run: the same results file (its science and its path) and run name
    always give the same id, so a resumed or requeued sweep continues its tracker runs."""
    key = f"{science_hash}|{Path(results_path)}|{run}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _scalar(ds: h5py.Dataset) -> float | None:
    if ds.shape != () or ds.dtype.kind not in "biuf":
        return None
    return float(ds[()])


def read_round(f: h5py.File, run: str, rnd: int) -> RoundRecord | None:
    """The committed round `rnd` of `run`, or None when it is not committed."""
    rg = f.get(S.round_path(run, rnd))
    if rg is None or not is_committed(rg):
        return None
    rec = RoundRecord(run, rnd)
    for name, ds in rg.items():
        if isinstance(ds, h5py.Dataset) and (v := _scalar(ds)) is not None:
            rec.scalars[name] = v
    for name, ag in (rg[S.ATTACKS].items() if S.ATTACKS in rg else []):
        asr = np.asarray(ag[S.ASR][()], dtype=np.float64)
        flops = np.cumsum(np.asarray(ag[S.ATTACK_FLOPS_NOMINAL][()], dtype=np.float64))
        rec.attacks[name] = AttackCurve(asr, flops)
    return rec


def committed_in_round(results: ResultsFile, rnd: int) -> tuple[str, list[RoundRecord]]:
    """(science hash, the records of every run with round `rnd` committed)."""
    with results.open() as f:
        runs = list(f.get(S.RUNS, {}))
    return read_rounds(results, [(run, rnd) for run in runs])


def read_rounds(results: ResultsFile, pairs: list[tuple[str, int]]) -> tuple[str, list[RoundRecord]]:
    """(science hash, the committed ones of the (run, round) pairs, in the order given)."""
    with results.open() as f:
        sh = str(f.attrs.get("science_hash", ""))
        recs = [read_round(f, run, rnd) for run, rnd in pairs]
    return sh, [r for r in recs if r is not None]
