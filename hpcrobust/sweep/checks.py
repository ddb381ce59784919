"""Every check that can fail on user input, made before any work starts (invariant 6).

`before_work` needs only the config (and reads model configs, not weights); `with_tokenizers` runs
once the built-in family exists. Each attack's own checks come from its plug-in.
"""

from __future__ import annotations

from hpcrobust.attacks.base import CheckEnv
from hpcrobust.config import SweepConfig, science_hash
from hpcrobust.models import family
from hpcrobust.models.loading import model_config, resolve
from hpcrobust.store.results import ResultsFile
from hpcrobust.tasks import TaskData, load_task
from hpcrobust.tracking import check as check_tracking


def check_output(cfg: SweepConfig) -> ResultsFile:
    results = ResultsFile(cfg.output)
    results.check_writable_by(science_hash(cfg))
    return results


def vocab_sizes(cfg: SweepConfig) -> list[int]:
    sizes = []
    for m in cfg.models:
        hf = model_config(m, cfg.family)
        sizes.append(cfg.family.vocab_size if hf is None else int(hf.vocab_size))
    return sizes


def _attacks(cfg: SweepConfig):
    for group in ("attacks", "train_attacks"):
        for i, a in enumerate(getattr(cfg, group)):
            yield f"{group}.{i} ({a.name})", a


def _env(cfg: SweepConfig, vocabs: list[int]) -> CheckEnv:
    return CheckEnv(cfg.models, [resolve(m, cfg.family).path for m in cfg.models], vocabs, cfg.family)


def before_work(cfg: SweepConfig) -> tuple[ResultsFile, TaskData]:
    """Models, task, attacks, output and tracker; returns the results file and the task's examples."""
    for m in cfg.models:
        resolve(m, cfg.family)
    vocabs = vocab_sizes(cfg)
    task = load_task(cfg.task)
    env = _env(cfg, vocabs)
    for key, a in _attacks(cfg):
        a.plugin.check(a, key, env)
    results = check_output(cfg)
    check_tracking(cfg.tracking)
    return results, task


def with_tokenizers(cfg: SweepConfig) -> None:
    """Checks that need the tokenizers (after the built-in family is built, before any run starts)."""
    env = _env(cfg, [])
    for key, a in _attacks(cfg):
        a.plugin.check_tokenizers(a, key, env)


def builtin_sizes(cfg: SweepConfig) -> list[str]:
    """The built-in sizes the sweep needs: its models and what its attacks load (BEAST's sampler)."""
    models = list(cfg.models)
    for _, a in _attacks(cfg):
        models += a.plugin.extra_models(a, cfg.family)
    sizes = {resolve(m, cfg.family).builtin for m in models}
    return sorted((s for s in sizes if s), key=list(family.SIZES).index)
