"""`hpcrobust status FILE`: where a sweep stands, from what it leaves on disk and (when present) SLURM.

It reads the results file (one open, under the readers' lock: a reader always sees one whole commit, see
store/access.py), the file's lock (who writes it, alive or not), its checkpoint folder, and SLURM's word on
the job named in the lock (or given with --job). Nothing is written, and torch is never imported.

Each (run, round) cell is one of:
    committed   the round is in the file with its committed mark
    running     the run's next round, while a live sweep holds the lock (or SLURM says the job runs); under
                parallel.schedule=queue, the rounds the claim file says a group holds
    failed      the run's next round, when the lock's holder died (a stale lock) or SLURM says the job failed
    waiting     everything else that is planned (a stopped sweep, a queued job, later rounds)
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import yaml

from hpcrobust.errors import UserError
from hpcrobust.launch.queue import JobInfo, accounting_state, job_info
from hpcrobust.models.config import ModelConfig, model_label
from hpcrobust.store import schema as S
from hpcrobust.store.results import LockHolder, ResultsFile, is_committed

COMMITTED, RUNNING, WAITING, FAILED = "committed", "running", "waiting", "failed"
DEVICE_HOURS_NAMES = ("device_hours", "gpu_hours")  # a per-round scalar, when the file stores one
SLURM_LIVE = {"RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "RESIZING", "SIGNALING"}
SLURM_QUEUED = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED", "RESV_DEL_HOLD"}
SLURM_TIMEOUT_S = 10.0


@dataclass
class RunStatus:
    key: str
    label: str  # the size
    planned: int  # last planned round
    rounds: dict[int, dict] = field(default_factory=dict)  # committed round -> wall, device_hours, accuracy, asr
    checkpoint: int = -1  # last round whose checkpoint is whole on disk
    saving: bool = False  # a checkpoint is being written now (its .tmp folder exists)
    cells: list[str] = field(default_factory=list)  # the state of rounds 0..planned

    @property
    def finished(self) -> bool:
        return all(r in self.rounds for r in range(self.planned + 1))

    @property
    def next_round(self) -> int:
        return next((r for r in range(self.planned + 1) if r not in self.rounds), -1)


@dataclass
class SweepStatus:
    path: Path
    experiment: str
    attacks: list[str]
    runs: list[RunStatus]
    state: str  # finished, running, queued, stopped, failed
    why: str  # who says so, in a few words
    holder: LockHolder | None
    job: JobInfo | None
    last_commit: float  # the file's mtime: the time of the last commit
    groups: int = 1  # runs worked on at once (from the lock while a sweep runs, else 1)
    work_left_s: float | None = None  # run-seconds still to do (estimate)
    left_s: float | None = None  # wall-clock seconds left (estimate): work_left_s / groups

    @property
    def finished(self) -> bool:
        return all(r.finished for r in self.runs)

    def counts(self) -> dict[str, int]:
        out = {COMMITTED: 0, RUNNING: 0, WAITING: 0, FAILED: 0}
        for r in self.runs:
            for c in r.cells:
                out[c] += 1
        return out


def _scalar(g: h5py.Group, name: str) -> float | None:
    obj = g.get(name)
    if isinstance(obj, h5py.Dataset) and obj.shape == ():
        return float(obj[()])
    return float(g.attrs[name]) if name in g.attrs else None


def _round(rg: h5py.Group) -> dict:
    """What status shows of one committed round."""
    asr = {}
    for name, ag in rg.get(S.ATTACKS, {}).items():
        ds = ag.get(S.ASR_CURRENT, ag.get(S.ASR))
        if ds is not None and ds.shape and ds.shape[0]:
            asr[name] = float(ds[-1])
    hours = next((h for h in (_scalar(rg, n) for n in DEVICE_HOURS_NAMES) if h is not None), None)
    return {"wall": _scalar(rg, S.WALL_TIME), "device_hours": hours, "accuracy": _scalar(rg, S.CLEAN_ACCURACY),
            "asr": asr}


def _planned(cfg: dict, stored: dict[str, int]) -> list[tuple[str, str, int]]:
    """(key, size, last round) of every planned run, in the sweep's order (sweep/plan.py: model-major, key
    `<label>__seed<seed>`). A run's stored `rounds` attribute wins; with equal_compute and nothing committed
    the config's advtrain.rounds is an upper bound."""
    adv = cfg.get("advtrain") or {}
    out = []
    for i, m in enumerate(cfg.get("models") or []):
        mc = ModelConfig.from_data(m, f"models.{i}")
        for seed in cfg.get("seeds") or [0]:
            key = f"{model_label(mc)}__seed{seed}"
            last = stored.get(key, mc.rounds if mc.rounds >= 0 else int(adv.get("rounds", 0)))
            out.append((key, model_label(mc), last))
    return out


def _read(path: Path) -> tuple[dict, str, list[RunStatus], list[str]]:
    """Config, experiment, runs (their committed rounds filled in) and attacks, from one open of the file."""
    with ResultsFile(path).open() as f:
        cfg = yaml.safe_load(f.attrs.get("config", "")) or {}
        stored = {k: int(g.attrs.get(S.PLANNED_ROUNDS, -1)) for k, g in f.get(S.RUNS, {}).items()}
        runs = [RunStatus(k, label, last) for k, label, last in _planned(cfg, stored)]
        known = {r.key for r in runs}
        runs += [RunStatus(k, str(g.attrs.get(S.MODEL_LABEL, k)), stored[k])  # unplanned: never, but show it
                 for k, g in f.get(S.RUNS, {}).items() if k not in known]
        for run in runs:
            g = f.get(S.run_path(run.key))
            for name, rg in (g[S.ROUNDS].items() if g is not None and S.ROUNDS in g else ()):
                if is_committed(rg):
                    run.rounds[int(name)] = _round(rg)
        experiment = str(f.attrs.get("experiment", "") or cfg.get("experiment", ""))
    attacks = [str(a.get("name", "")) for a in cfg.get("attacks") or [] if isinstance(a, dict)]
    seen = {a for r in runs for rd in r.rounds.values() for a in rd["asr"]}
    return cfg, experiment, runs, attacks + sorted(seen - set(attacks))


def _checkpoints(rf: ResultsFile, run: RunStatus) -> None:
    folder = rf.checkpoint_root / run.key
    try:
        names = [p.name for p in folder.iterdir()]
    except OSError:
        return
    done = [int(n[6:10]) for n in names if n.startswith("round_") and n[6:10].isdigit() and len(n) == 10]
    run.checkpoint = max(done, default=-1)
    run.saving = any(n.endswith(".tmp") for n in names)


def slurm_job(job_id: str) -> JobInfo | None:
    """SLURM's word on a job, asked with a short timeout; None when SLURM is absent or does not answer."""
    info = job_info(job_id, SLURM_TIMEOUT_S)
    if info.state == "GONE":  # slurmctld forgot it; accounting may remember
        state = accounting_state(job_id, SLURM_TIMEOUT_S)
        return JobInfo(job_id, state) if state else None
    return None if info.state == "UNKNOWN" else info


def _sweep_state(runs: list[RunStatus], holder: LockHolder | None, job: JobInfo | None) -> tuple[str, str]:
    if all(r.finished for r in runs):
        return "finished", "every planned round is committed"
    if job is not None:
        word = f"SLURM job {job.job_id} is {job.state}" + (f" ({job.reason})" if job.reason not in ("", "None")
                                                            else "")
        if job.state in SLURM_LIVE:
            return "running", word
        if job.state in SLURM_QUEUED:
            return "queued", word
        if job.state != "COMPLETED":
            return "failed", word
    if holder is not None:
        who = f"pid {holder.pid} on {holder.host}" if holder.pid > 0 else "a starting sweep"
        if holder.alive:
            return "running", f"{who} holds the lock"
        return "failed", f"the lock's holder ({who}) is gone: the sweep was killed"
    return "stopped", "no sweep holds the lock"


def _cells(run: RunStatus, state: str, claimed: set[int] | None = None) -> list[str]:
    """`claimed`: under parallel.schedule=queue, the run's rounds some group holds now (the others wait)."""
    nxt = run.next_round
    mark = {"running": RUNNING, "failed": FAILED}.get(state, WAITING)
    if claimed is not None and state == "running":
        return [COMMITTED if r in run.rounds else (RUNNING if r in claimed else WAITING)
                for r in range(run.planned + 1)]
    return [COMMITTED if r in run.rounds else (mark if r == nxt else WAITING) for r in range(run.planned + 1)]


def queue_claims(rf: ResultsFile, runs: list[RunStatus]) -> dict[str, set[int]] | None:
    """{run: rounds claimed} from a queue-scheduled sweep's claim file (sweep/queue.py), else None. Read without
    its lock: the file is replaced whole."""
    path = rf.checkpoint_root / "queue.json"
    try:
        claims = json.loads(path.read_text()).get("claims", {})
    except (OSError, ValueError):
        return None
    out: dict[str, set[int]] = {r.key: set() for r in runs}
    for name in claims:
        kind, run, rnd = name.split(":")
        if kind == "round" and 0 <= int(run) < len(runs):
            out[runs[int(run)].key].add(int(rnd))
    return out


def estimate(runs: list[RunStatus]) -> dict[tuple[str, int], float] | None:
    """Run-seconds of each round not committed: the mean wall time of its size's committed rounds of the same
    kind (round 0 fine-tunes, later rounds train adversarially), else of any size's, else of the other kind.
    None when no round says how long it took."""
    def mean(walls: list[float]) -> float | None:
        return statistics.fmean(walls) if walls else None

    def walls(pool: list[RunStatus], first: bool) -> list[float]:
        return [d["wall"] for r in pool for k, d in r.rounds.items() if (k == 0) == first and d["wall"] is not None]

    out = {}
    for run in runs:
        size = [r for r in runs if r.label == run.label]
        for rnd in range(run.planned + 1):
            if rnd in run.rounds:
                continue
            kind = rnd == 0
            guess = next((g for g in (mean(walls(size, kind)), mean(walls(runs, kind)), mean(walls(size, not kind)),
                                      mean(walls(runs, not kind))) if g is not None), None)
            if guess is None:
                return None
            out[(run.key, rnd)] = guess
    return out


def _time_left(st: SweepStatus, lock_mtime: float | None, now: float) -> None:
    """Run-seconds left, and wall-clock seconds: divided among the groups, less what the rounds running now have
    already spent since this attempt's last commit (or its start, when it has not committed yet)."""
    each = estimate(st.runs)
    if each is None:
        return
    st.work_left_s = sum(each.values())
    par = max(1, min(st.groups, sum(1 for r in st.runs if not r.finished)))
    running = sum(t for (key, rnd), t in each.items()
                  if next(r for r in st.runs if r.key == key).cells[rnd] == RUNNING)
    spent = now - max(st.last_commit, lock_mtime or 0.0) if running else 0.0
    st.left_s = max(0.0, running / par - spent) + (st.work_left_s - running) / par


def collect(path: str | Path, job_id: str = "") -> SweepStatus:
    """The status of the sweep whose results file is `path` (`job_id`: the SLURM job to ask about, when the
    lock does not name one)."""
    rf = ResultsFile(path)
    if rf.path.is_dir():
        raise UserError(f"{rf.path} is a folder; give the sweep's results file (its `output`)")
    if not rf.path.is_file():
        busy = " (a sweep holds its lock but has committed nothing yet)" if rf.lock_path.is_file() else ""
        raise UserError(f"results file not found: {rf.path}{busy}")
    holder = rf.holder()  # before the file: a sweep that ends in between then reads as finished, not stopped
    mtime = rf.path.stat().st_mtime
    _, experiment, runs, attacks = _read(rf.path)
    job_id = job_id or (holder.details.get("slurm_job", "") if holder is not None else "")
    job = slurm_job(job_id) if job_id else None
    state, why = _sweep_state(runs, holder, job)
    claims = queue_claims(rf, runs) if state == "running" else None
    for run in runs:
        _checkpoints(rf, run)
        run.cells = _cells(run, state, None if claims is None else claims[run.key])
    groups = 1
    if state == "running" and holder is not None and holder.details.get("groups", "").isdigit():
        groups = max(1, int(holder.details["groups"]))
    st = SweepStatus(rf.path, experiment, attacks, runs, state, why, holder, job, mtime, groups)
    _time_left(st, _mtime(rf.lock_path), time.time())
    return st


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def device_hours(runs: list[RunStatus], rnd: int) -> float | None:
    """Device-hours of a round, summed over its committed runs, when every one of them stores them."""
    hours = [r.rounds[rnd]["device_hours"] for r in runs if rnd in r.rounds]
    return float(np.sum(hours)) if hours and all(h is not None for h in hours) else None
