"""Every check that can fail on user input, run before any work starts (invariant 6)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hpcrobust.config import SweepConfig, model_label, science_hash
from hpcrobust.errors import UserError
from hpcrobust.models import family
from hpcrobust.models.loading import model_config, resolve
from hpcrobust.store.writer import check_existing
from hpcrobust.tasks import TaskData, load_task


@dataclass
class RunSpec:
    index: int
    key: str  # the run's name in the results file
    model_index: int
    seed: int


def plan_runs(cfg: SweepConfig) -> list[RunSpec]:
    """Runs in a fixed order (model-major), independent of how many ranks will share them."""
    runs = []
    for mi, m in enumerate(cfg.models):
        for seed in cfg.seeds:
            runs.append(RunSpec(len(runs), f"{model_label(m)}__seed{seed}", mi, seed))
    return runs


def check_output(cfg: SweepConfig) -> Path:
    out = Path(cfg.output).expanduser()
    if out.is_dir():
        raise UserError(f"output {out} is a folder; give a file path such as {out / 'results.h5'}")
    if not out.parent.is_dir():
        raise UserError(f"output folder does not exist: {out.parent}")
    if out.exists():
        check_existing(out, science_hash(cfg))
    return out


def vocab_sizes(cfg: SweepConfig) -> list[int]:
    sizes = []
    for m in cfg.models:
        hf = model_config(m, cfg.family)
        sizes.append(cfg.family.vocab_size if hf is None else int(hf.vocab_size))
    return sizes


def preflight(cfg: SweepConfig) -> tuple[Path, TaskData]:
    for m in cfg.models:
        resolve(m, cfg.family)
    vocabs = vocab_sizes(cfg)
    task = load_task(cfg.task)
    from hpcrobust.attacks.registry import check_attacks

    check_attacks(cfg, vocabs)
    return check_output(cfg), task


def builtin_sizes(cfg: SweepConfig) -> list[str]:
    sizes = [resolve(m, cfg.family).builtin for m in cfg.models]
    extra = [a.sampler.split(":", 1)[1] for a in cfg.attacks + cfg.train_attacks
             if a.type == "beast" and a.sampler.startswith("builtin:")]
    if any(a.type == "beast" and not a.sampler for a in cfg.attacks + cfg.train_attacks):
        extra.append(smallest_builtin())
    return sorted({s for s in sizes + extra if s}, key=list(family.SIZES).index)


def smallest_builtin() -> str:
    return min(family.SIZES, key=lambda s: family.SIZES[s].hidden ** 2 * family.SIZES[s].layers)
