"""The two tracker backends. Each takes committed rounds and puts them into one tracker run per sweep run.

wandb runs offline (files under `<dir>/wandb/offline-run-*`, uploaded later with `wandb sync`); a resumed
sweep writes a new offline folder under the same run id, continuing at the next round (the step is the
round). MLflow writes to a tracking URI (a local SQLite file by default); a resumed sweep finds its run by
the `hpcrobust_run_id` tag and logs into it. Scalars go in at step = round; each attack's ASR curve goes to
wandb as a table per round, and to MLflow as a metric per round whose steps are the attack's iterations.
"""

from __future__ import annotations

import logging
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from hpcrobust.errors import UserError
from hpcrobust.store.identity import flatten
from hpcrobust.tracking.records import RoundRecord

RUN_TAG = "hpcrobust_run_id"
MLFLOW_BATCH = 1000  # MLflow's limit of metrics per log_batch call
MLFLOW_PARAMS = 100  # ... and of params per call


@dataclass(frozen=True)
class RunInfo:
    key: str  # the run's name in the results file
    tracker_id: str  # stable across resumes (records.tracker_run_id)
    display: str  # <name>/<run>
    group: str  # the experiment


class WandbBackend:
    def __init__(self, project: str, folder: Path) -> None:
        import wandb

        self.wandb = wandb
        self.project = project
        self.folder = folder
        self.runs: dict[str, object] = {}

    def connect(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"tracking.dir: cannot create {self.folder}: {exc.strerror}") from None

    def _run(self, info: RunInfo, config: dict):
        if info.key not in self.runs:
            wandb = self.wandb
            settings = wandb.Settings(silent=True, console="off", x_disable_stats=True, disable_git=True,
                                      save_code=False)
            self.runs[info.key] = wandb.init(project=self.project, id=info.tracker_id, name=info.display,
                                             group=info.group, config=config, resume="allow", mode="offline",
                                             dir=str(self.folder), reinit="create_new", settings=settings)
        return self.runs[info.key]

    def log(self, info: RunInfo, rec: RoundRecord, config: dict) -> None:
        run = self._run(info, config)
        data: dict[str, object] = {"round": rec.round, **rec.metrics()}
        for name, c in rec.attacks.items():
            rows = [[i, float(a), float(fl)] for i, (a, fl) in enumerate(zip(c.asr, c.flops, strict=True))]
            data[f"attack/{name}/asr_curve"] = self.wandb.Table(columns=["iteration", "asr", "attack_flops"],
                                                                data=rows)
        run.log(data, step=rec.round)

    def finish(self, ok: bool) -> None:
        for run in self.runs.values():
            run.finish(exit_code=0 if ok else 1)
        self.runs.clear()


class MlflowBackend:
    def __init__(self, project: str, uri: str) -> None:
        from mlflow.tracking import MlflowClient

        self.client_cls = MlflowClient
        self.project = project
        self.uri = uri
        self.client = None
        self.experiment_id = ""
        self.runs: dict[str, str] = {}  # run key -> MLflow run id

    def connect(self) -> None:
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.client = self.client_cls(tracking_uri=self.uri)
                exp = self.client.get_experiment_by_name(self.project)
                self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(self.project)
        except Exception as exc:  # noqa: BLE001 - MLflow raises many kinds for an unusable store
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"tracking.uri: MLflow cannot use {self.uri}: {first}") from None

    def _run(self, info: RunInfo, config: dict) -> str:
        if info.key in self.runs:
            return self.runs[info.key]
        from mlflow.entities import Param

        c = self.client
        found = c.search_runs([self.experiment_id], filter_string=f"tags.{RUN_TAG} = '{info.tracker_id}'",
                              max_results=1)
        if found:
            rid = found[0].info.run_id
            c.update_run(rid, status="RUNNING")
        else:
            rid = c.create_run(self.experiment_id, run_name=info.display,
                               tags={RUN_TAG: info.tracker_id, "hpcrobust_run": info.key,
                                     "hpcrobust_experiment": info.group}).info.run_id
            params = [Param(re.sub(r"[^\w\-. /]", "_", k)[:250], v[:6000]) for k, v in flatten(config).items()]
            for i in range(0, len(params), MLFLOW_PARAMS):
                c.log_batch(rid, params=params[i:i + MLFLOW_PARAMS])
        self.runs[info.key] = rid
        return rid

    def log(self, info: RunInfo, rec: RoundRecord, config: dict) -> None:
        from mlflow.entities import Metric

        rid = self._run(info, config)
        ts = int(time.time() * 1000)
        metrics = [Metric(k, float(v), ts, rec.round) for k, v in {"round": rec.round, **rec.metrics()}.items()]
        for name, c in rec.attacks.items():
            key = f"asr_curve/{name}/round_{rec.round:04d}"
            metrics += [Metric(key, float(a), ts, i) for i, a in enumerate(c.asr)]
        for i in range(0, len(metrics), MLFLOW_BATCH):
            self.client.log_batch(rid, metrics=metrics[i:i + MLFLOW_BATCH])

    def finish(self, ok: bool) -> None:
        for rid in self.runs.values():
            self.client.set_terminated(rid, "FINISHED" if ok else "KILLED")  # KILLED: stopped, resumable
        self.runs.clear()
