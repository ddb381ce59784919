"""Tracker settings: off by default; they never change a stored number (store/identity.py: not science)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from hpcrobust.errors import UserError
from hpcrobust.fields import setting

BACKENDS = ("none", "wandb", "mlflow")


@dataclass
class TrackingConfig:
    backend: str = setting("none", choices=BACKENDS, doc="experiment tracker that also gets every committed round's"
                           " scalars and ASR curves (writer rank only; extras hpcrobust[wandb] / hpcrobust[mlflow])")
    project: str = setting("", doc="wandb project / MLflow experiment (default: the experiment name)")
    name: str = setting("", doc="tracker run names are <name>/<run> (default: the experiment name)")
    uri: str = setting("", doc="mlflow: tracking URI, e.g. sqlite:///runs.db or http://host:5000 (default:"
                       " $MLFLOW_TRACKING_URI, else sqlite:///<output folder>/mlflow.db)")
    dir: str = setting("", doc="wandb: folder that gets wandb/offline-run-* (offline; `wandb sync` later; default:"
                       " the output's folder)")

    def validate(self) -> None:
        if self.uri and self.backend != "mlflow":
            raise UserError(f"tracking.uri: only for tracking.backend=mlflow (backend is {self.backend})")
        if self.dir and self.backend != "wandb":
            raise UserError(f"tracking.dir: only for tracking.backend=wandb (backend is {self.backend})")
        try:
            secret = urlsplit(self.uri).password
        except ValueError:
            raise UserError(f"tracking.uri: not a URI: {self.uri!r}") from None
        if secret:
            raise UserError("tracking.uri: holds a password, and the config is stored in the results file; give the"
                            " URI through MLFLOW_TRACKING_URI (and MLFLOW_TRACKING_USERNAME/PASSWORD) instead")
