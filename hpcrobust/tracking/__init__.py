"""Experiment trackers (wandb, MLflow): optional, off by default, fed from the sweep's hooks.

    check(cfg.tracking)                  before any work: the backend's extra is importable (one-line error)
    tracker = attach(hooks, ...)         round_committed: log the round (queue_committed under the queue
                                         schedule: the rounds committed since); sweep_finished: finish the runs
    tracker.connect()                    on the writer rank, with the checks: open the tracker's store
    tracker.close()                      whatever ended the sweep (a stop, an error): end the tracker runs

Only the writer rank (world rank 0) talks to the tracker. It logs what the results file holds after each
commit (records.py), one tracker run per sweep run, under an id derived from the file and the run name, so a
resumed or requeued sweep continues the same tracker runs. The tracker never changes what is computed or
stored; if it fails in the middle of a sweep it is switched off with one log line and the sweep goes on.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from hpcrobust.errors import UserError
from hpcrobust.log import log
from hpcrobust.store.results import TRANSFER_KEY
from hpcrobust.tracking.backends import MlflowBackend, RunInfo, WandbBackend
from hpcrobust.tracking.config import BACKENDS, TrackingConfig
from hpcrobust.tracking.records import committed_in_round, read_rounds, tracker_run_id

__all__ = ["BACKENDS", "Tracker", "TrackingConfig", "attach", "check"]

MODULES = {"wandb": "wandb", "mlflow": "mlflow"}  # backend -> the module its extra installs


def check(cfg: TrackingConfig) -> None:
    """The chosen backend's package is installed (it is an extra: pip install "hpcrobust[wandb]")."""
    if cfg.backend == "none":
        return
    try:
        importlib.import_module(MODULES[cfg.backend])
    except ImportError as exc:
        raise UserError(f"tracking.backend: {cfg.backend} is not installed in this environment"
                        f" ({type(exc).__name__}: {exc}); install the extra: pip install 'hpcrobust[{cfg.backend}]'"
                        f" or set tracking.backend=none") from None


class Tracker:
    """Hook callbacks that forward committed rounds to one backend, on world rank 0 only."""

    def __init__(self, cfg: TrackingConfig, experiment: str, output: Path) -> None:
        self.cfg = cfg
        self.experiment = experiment
        self.project = cfg.project or experiment
        self.prefix = cfg.name or experiment
        self.folder = output.parent
        self.backend: Any = None
        self.config: dict | None = None
        self.logged: set[tuple[str, int]] = set()  # (run, round) forwarded to the tracker

    def _make(self):
        if self.cfg.backend == "wandb":
            return WandbBackend(self.project, Path(self.cfg.dir).expanduser().absolute() if self.cfg.dir
                                else self.folder)
        uri = self.cfg.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.folder / 'mlflow.db'}"
        return MlflowBackend(self.project, uri)

    def connect(self) -> None:
        """On the writer rank, before the sweep takes its lock: an unusable tracker store is a user error."""
        backend = self._make()
        backend.connect()
        self.backend = backend
        log(f"tracking: {self.cfg.backend} project '{self.project}'")

    def sweep_started(self, ctx) -> None:
        """The rounds already in the file were logged by the attempts that committed them."""
        if self.backend is not None:
            self.logged = {(run, r) for run, rs in ctx.results.committed_rounds().items() if run != TRANSFER_KEY
                           for r in rs}

    def round_committed(self, ctx, rnd: int, n: int) -> None:
        self._forward(ctx, f"round {rnd}", lambda: committed_in_round(ctx.results, rnd))

    def queue_committed(self, ctx) -> None:
        """Under parallel.schedule=queue: every round any group committed since the last look, once it holds
        every attack the sweep evaluates there (an ensemble is added to a committed round later)."""
        def fetch():
            new = sorted(((run, r) for run, rs in ctx.results.committed_rounds().items() if run != TRANSFER_KEY
                          for r in rs if (run, r) not in self.logged), key=lambda p: (p[1], p[0]))
            sh, recs = read_rounds(ctx.results, new)
            specs = {r.key: r for r in ctx.plan.runs}
            return sh, [rec for rec in recs if rec.run in specs and {a.name for a in ctx.cfg.attacks
                                                                    if ctx.plan.evaluates(a, specs[rec.run], rec.round)}
                        <= set(rec.attacks)]
        self._forward(ctx, "the queue", fetch)

    def _forward(self, ctx, where: str, fetch) -> None:
        if self.backend is None:
            return
        try:
            science_hash, records = fetch()
            if self.config is None:  # the file's config, less where the tracker itself lives
                self.config = {k: v for k, v in ctx.results.stored_config().items() if k != "tracking"}
            for rec in records:
                info = RunInfo(rec.run, tracker_run_id(science_hash, ctx.results.path, rec.run),
                               f"{self.prefix}/{rec.run}", self.experiment)
                self.backend.log(info, rec, self.config)
                self.logged.add((rec.run, rec.round))
        except Exception as exc:  # noqa: BLE001 - a tracker outage must not end a sweep; the file has it all
            log(f"tracking: {self.cfg.backend} failed in {where} ({type(exc).__name__}: {exc}); tracking is"
                f" off for the rest of this sweep, the results file is complete")
            self._end(ok=False)

    def sweep_finished(self, ctx) -> None:
        self._end(ok=True)

    def close(self) -> None:
        self._end(ok=False)

    def _end(self, ok: bool) -> None:
        backend, self.backend = self.backend, None
        if backend is not None:
            try:
                backend.finish(ok)
            except Exception as exc:  # noqa: BLE001
                log(f"tracking: {self.cfg.backend} could not close its runs ({type(exc).__name__}: {exc})")


def attach(hooks, cfg: TrackingConfig, experiment: str, output: str | Path) -> Tracker | None:
    """Attach a tracker to `hooks` (a sweep.hooks.Hooks). Its round_committed callback goes first, so a
    callback that stops the sweep after a commit (a safe stop, debug.stop_after_round) cannot skip it."""
    if cfg.backend == "none":
        return None
    tracker = Tracker(cfg, experiment, Path(output).expanduser().absolute())
    hooks.on("sweep_started", tracker.sweep_started, first=True)
    hooks.on("round_committed", tracker.round_committed, first=True)
    hooks.on("queue_committed", tracker.queue_committed, first=True)
    hooks.on("sweep_finished", tracker.sweep_finished)
    return tracker
