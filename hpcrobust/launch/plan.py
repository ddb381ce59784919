"""What a submission consists of: one sweep, or one array task per seed or per shard of the seeds.

Each array task is an ordinary sweep with two more overrides (`seeds=[...]`, `output=...`), so it
runs exactly the code of `hpcrobust run` and stores per run exactly what the whole sweep would
(random streams are keyed by run name and seed, never by position or rank).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from hpcrobust.config import LaunchConfig, SweepConfig, load_config
from hpcrobust.errors import UserError
from hpcrobust.parallel.sizes import job_nodes


@dataclass(frozen=True)
class TaskSpec:
    """One job, or one task of a job array: a sweep of its own with its own results file."""

    label: str  # "" for a single job, "seed3" or "shard1" for array tasks
    seeds: tuple[int, ...]
    output: Path  # absolute
    user: tuple[str, ...]  # the user's overrides
    extra: tuple[str, ...]  # this task's own: `output=...`, and `seeds=[...]` in an array

    @property
    def overrides(self) -> tuple[str, ...]:
        return self.user + self.extra

    def describe(self) -> str:
        seeds = ",".join(map(str, self.seeds))
        return f"seeds [{seeds}] -> {self.output}"


def quote_times(overrides: list[str] | tuple[str, ...]) -> list[str]:
    """`launch.timeout_min=1:30:00` would be read by YAML as the number 5400; keep it the string it is."""
    out = []
    for ov in overrides:
        key, sep, value = ov.partition("=")
        if sep and key.strip() == "launch.timeout_min" and ":" in value and not value.strip().startswith(("'", '"')):
            ov = f"{key}='{value.strip()}'"
        out.append(ov)
    return out


def _path_override(key: str, path: Path) -> str:
    """A path as a YAML double-quoted string (JSON is valid YAML), so `: `, `#` or quotes in it stay text."""
    return f"{key}={json.dumps(str(path))}"


def task_output(output: Path, label: str) -> Path:
    """results.h5 -> results.seed3.h5: each array task writes its own file next to the others."""
    return output.with_name(f"{output.stem}.{label}{output.suffix or '.h5'}")


def shard_seeds(seeds: list[int], shards: int) -> list[list[int]]:
    """Contiguous, near-equal shards in seed order (the first shards get one more when it does not divide)."""
    base, extra = divmod(len(seeds), shards)
    out, start = [], 0
    for j in range(shards):
        n = base + (1 if j < extra else 0)
        out.append(seeds[start:start + n])
        start += n
    return out


def plan_tasks(cfg: SweepConfig, overrides: list[str]) -> list[TaskSpec]:
    output = Path(cfg.output).expanduser().absolute()
    base = tuple(overrides)
    groups: list[tuple[str, list[int]]]
    if cfg.launch.array_over == "seeds":
        groups = [(f"seed{s}", [s]) for s in cfg.seeds]
    elif cfg.launch.array_over == "shards":
        groups = [(f"shard{j}", g) for j, g in enumerate(shard_seeds(cfg.seeds, cfg.launch.array_shards))]
    else:
        return [TaskSpec("", tuple(cfg.seeds), output, base, (_path_override("output", output),))]
    tasks = []
    for label, seeds in groups:
        out = task_output(output, label)
        seed_list = "[" + ",".join(map(str, seeds)) + "]"
        tasks.append(TaskSpec(label, tuple(seeds), out, base, (f"seeds={seed_list}", _path_override("output", out))))
    return tasks


def job_nodes_of(cfg: SweepConfig, tasks: list[TaskSpec], config: str | Path) -> int:
    """Nodes of each job: launch.nodes, or in the per-size layout the sizes' ranks over launch.tasks_per_node."""
    try:
        return job_nodes(cfg.models, cfg.parallel.ranks_per_group, [len(t.seeds) for t in tasks], cfg.launch.nodes,
                         cfg.launch.tasks_per_node)
    except UserError as exc:
        raise UserError(f"{config}: {exc}") from None


def task_configs(config: str | Path, tasks: list[TaskSpec]) -> list[SweepConfig]:
    """Each task's own config, validated now so a bad one fails before anything is queued."""
    return [load_config(config, list(t.overrides)) for t in tasks]


def require_partition(launch: LaunchConfig, config: str | Path) -> None:
    if not launch.slurm_partition:
        raise UserError(f"{config}: launch.slurm_partition: no partition given; set it in the config or"
                        f" add launch.slurm_partition=NAME (see `sinfo -s` for the partitions)")


def log_root(folder: str) -> Path:
    """The part of the log folder before the first %-pattern: where submission files can live."""
    parts = Path(folder).expanduser().parts
    keep = []
    for p in parts:
        if "%" in p:
            break
        keep.append(p)
    return Path(*keep).absolute() if keep else Path.cwd()


def job_name(config: str | Path, experiment: str = "") -> str:
    """A job name SLURM and shells take without quoting: the experiment's name (else the config's stem),
    other characters replaced."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", experiment or Path(config).stem)[:40] or "sweep"
    return f"hpcrobust-{stem}"
