"""A sweep's config: YAML -> typed dataclasses, `key.sub=value` overrides, one-line errors.

Each part of the package owns its settings (tasks/config.py, models/config.py, attacks/config.py with
each attack's own parameters, training/config.py, parallel/config.py, config/launch.py); this module
assembles them into `SweepConfig` and checks what involves more than one part. Everything a sweep
does is decided here, before any work starts, so a bad value costs one line and exit 2 rather than a
traceback an hour into a job.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hpcrobust.attacks.config import AttackConfig, TrainAttackConfig
from hpcrobust.config.launch import LaunchConfig, directive_safe, slurm_minutes
from hpcrobust.errors import UserError
from hpcrobust.fields import build, setting, to_data
from hpcrobust.fields import describe as describe_fields
from hpcrobust.models.config import FamilyConfig, ModelConfig, model_label
from hpcrobust.parallel.config import ParallelConfig
from hpcrobust.parallel.sizes import is_per_size, size_ranks
from hpcrobust.store.identity import science_hash_of
from hpcrobust.tasks.config import TaskConfig
from hpcrobust.tracking.config import TrackingConfig
from hpcrobust.training.config import AdvTrainConfig, FinetuneConfig

__all__ = ["AdvTrainConfig", "AttackConfig", "DebugConfig", "FamilyConfig", "FinetuneConfig", "LaunchConfig",
           "ModelConfig", "ParallelConfig", "SweepConfig", "TaskConfig", "TrackingConfig", "TrainAttackConfig",
           "config_from_dict", "describe", "directive_safe", "load_config", "model_label", "science_hash",
           "slurm_minutes", "to_dict", "to_yaml"]


@dataclass
class DebugConfig:
    """Test-only switches; they act through the sweep's hooks (sweep/debug.py), not inside its loop."""

    fail_rank: int = setting(-1, lo=-1, doc="raise on this world rank (test-only)")
    fail_round: int = setting(0, lo=0, doc="... in this round")
    fail_in: str = setting("round", choices=("round", "mid_round", "checks"), doc="... where: when the round"
                           " starts, after this rank's runs of the round and before the cross-run phases, or in"
                           " the checks before any work")
    stop_after_round: int = setting(-1, lo=-1, doc="exit 3 after committing this round (resume tests)")
    fake_oom_above: int = setting(0, lo=0, doc="fake a CUDA out-of-memory error for any batched step tried with more"
                                  " rows than this (0: off), to test the back-off")
    fake_oom_rank: int = setting(-1, lo=-1, doc="... only on this world rank (-1: every rank)")


@dataclass
class SweepConfig:
    experiment: str = setting("", doc="the experiment's name: stored in the results file, names tracker runs, titles"
                              " `analyze`'s report and figures, SLURM job name (default: the config file's name)")
    output: str = setting("results.h5", doc="results file (HDF5); checkpoints go to <output>.ckpt/")
    seeds: list[int] = setting(factory=lambda: [0], doc="one run per (model, seed)")
    task: TaskConfig = setting(factory=TaskConfig)
    models: list[ModelConfig] = setting(factory=lambda: [ModelConfig()])
    family: FamilyConfig = setting(factory=FamilyConfig)
    finetune: FinetuneConfig = setting(factory=FinetuneConfig)
    attacks: list[AttackConfig] = setting(factory=list, doc="evaluation attacks, run after every round (or their"
                                          " attacks.N.rounds)")
    train_attacks: list[TrainAttackConfig] = setting(factory=list, doc="attacks that adversarial training may use")
    advtrain: AdvTrainConfig = setting(factory=AdvTrainConfig)
    parallel: ParallelConfig = setting(factory=ParallelConfig)
    launch: LaunchConfig = setting(factory=LaunchConfig)
    tracking: TrackingConfig = setting(factory=TrackingConfig)
    debug: DebugConfig = setting(factory=DebugConfig)

    def train_attack(self) -> TrainAttackConfig:
        return next(a for a in self.train_attacks if a.name == self.advtrain.attack)


def _validate(cfg: SweepConfig) -> None:
    """Checks that involve more than one field."""
    if not cfg.models:
        raise UserError("models: at least one model is needed")
    if not cfg.seeds:
        raise UserError("seeds: at least one seed is needed")
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise UserError("seeds: seeds repeat")
    if any(s < 0 for s in cfg.seeds):
        raise UserError("seeds: seeds must be >= 0")
    cfg.task.validate()
    cfg.finetune.validate()
    if not cfg.output:
        raise UserError("output: empty path")
    if len(cfg.experiment) > 128 or any(not ch.isprintable() for ch in cfg.experiment):
        raise UserError("experiment: a name of at most 128 printable characters on one line")
    cfg.tracking.validate()
    labels = [model_label(m) for m in cfg.models]
    if len(set(labels)) != len(labels):
        raise UserError("models: two models have the same label; set models.N.label")
    for group in ("attacks", "train_attacks"):
        names = [a.name for a in getattr(cfg, group)]
        if len(set(names)) != len(names):
            raise UserError(f"{group}: attack names repeat")
    for i, m in enumerate(cfg.models):
        if m.rounds > cfg.advtrain.rounds:
            raise UserError(f"models.{i}.rounds: {m.rounds} rounds, but the training-attack schedule"
                            f" (advtrain.rounds) only has {cfg.advtrain.rounds}")
    default = max(1, cfg.advtrain.rounds) if cfg.advtrain.equal_compute else cfg.advtrain.rounds  # an upper bound
    last = max(m.rounds if m.rounds >= 0 else default for m in cfg.models)
    for i, a in enumerate(cfg.attacks):
        if a.rounds.highest_listed > last:
            raise UserError(f"attacks.{i}.rounds: round {a.rounds.highest_listed} comes after the last round of"
                            f" every run ({last}: advtrain.rounds, models.N.rounds)")
    if cfg.advtrain.rounds > 0 or any(m.rounds > 0 for m in cfg.models):
        names = [a.name for a in cfg.train_attacks]
        if cfg.advtrain.attack not in names:
            raise UserError(f"advtrain.attack: '{cfg.advtrain.attack}' is not defined in train_attacks"
                            f" (defined: {', '.join(names) or 'none'})")
    cfg.launch.validate(len(cfg.seeds))
    per_size = is_per_size(cfg.models)
    if cfg.parallel.shard and max(size_ranks(m, cfg.parallel.ranks_per_group) for m in cfg.models) < 2:
        raise UserError("parallel.shard: sharding needs parallel.ranks_per_group of 2 or more (a group of one"
                        " rank holds the whole model)" if not per_size else "parallel.shard: sharding needs a"
                        " size with 2 or more ranks (models.N.ranks, or parallel.ranks_per_group for sizes without"
                        " it); a group of one rank holds the whole model")
    if cfg.parallel.shard and any(a.ensemble for a in cfg.attacks):
        raise UserError("parallel.shard: ensemble attacks (params.ensemble) are not supported with sharded models")


# ---------------------------------------------------------------- overrides

def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def apply_override(data: dict, override: str) -> None:
    """Set `a.b.c=value` in the raw mapping; list items are addressed by index (`models.0.label=x`)."""
    if "=" not in override:
        raise UserError(f"override '{override}': expected key.sub=value")
    key, text = override.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise UserError(f"override '{override}': empty key")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise UserError(f"override '{override}': no item {where}")
            node = node[int(part)]
        else:
            if part not in node or node[part] is None:
                node[part] = {}
            node = node[part]
        if not isinstance(node, (dict, list)):
            raise UserError(f"override '{override}': {where} is not a mapping")
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise UserError(f"override '{override}': no item {key}")
        node[int(last)] = _parse_value(text)
    else:
        node[last] = _parse_value(text)


# ---------------------------------------------------------------- loading

def read_text_file(path: str | Path, what: str) -> str:
    """A user's text file (config, template), or one line saying why it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{what} {path} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise UserError(f"{what} {path} cannot be read: {exc.strerror}") from None


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> SweepConfig:
    path = Path(path)
    text = read_text_file(path, "config file")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}:{where} is not valid YAML") from None
    if data is None or data == {}:  # a sweep of nothing but defaults is never what was meant
        raise UserError(f"{path}: the config is empty; start from configs/quickstart.yaml")
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping")
    if not data.get("experiment"):  # the default name: the config file's, before overrides can set one
        data["experiment"] = path.stem
    return config_from_dict(data, overrides, source=str(path))


def config_from_dict(data: dict, overrides: list[str] | tuple[str, ...] = (), source: str = "config"
                     ) -> SweepConfig:
    data = yaml.safe_load(yaml.safe_dump(data))  # deep copy of plain data

    def expand_models() -> None:  # so that `models.0.label=x` can address a `- builtin:s` entry
        if isinstance(data.get("models"), list):
            data["models"] = [{"name_or_path": m} if isinstance(m, str) else m for m in data["models"]]

    expand_models()
    defaults = to_dict(SweepConfig())
    try:
        for ov in overrides:
            top = ov.split("=", 1)[0].split(".")[0]
            if top not in data and top in defaults:  # an override into a default list or section
                data[top] = defaults[top]
            apply_override(data, ov)
            expand_models()
        cfg = build(SweepConfig, data, "")
        _validate(cfg)
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from None
    return cfg


def to_dict(cfg: Any) -> dict:
    """The config as plain data: what YAML holds and what the results file stores."""
    return to_data(cfg)


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def science_hash(cfg: SweepConfig, inputs: dict[str, str] | None = None) -> str:
    """Hash of everything that decides the stored numbers (with `inputs`, the digests of the task file and the
    model files); a rerun must match it to append to a file."""
    return science_hash_of(to_dict(cfg), inputs)


def describe() -> list[tuple[str, str, str]]:
    """(key, default, doc) for every config key, for --help and the README."""
    return describe_fields(SweepConfig)
