"""Every check that can fail on user input, made before any work starts (invariant 6).

`prepare` runs them in order on every rank of `comm`, agreeing on the first failure, so a bad input is
one line and exit 2 everywhere; `run` and `submit` (for each job it would queue) call the same function.
Each attack's own checks come from its plug-in.
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml

from hpcrobust.attacks.base import CheckEnv
from hpcrobust.config import SweepConfig, science_hash, to_dict
from hpcrobust.errors import UserError
from hpcrobust.models import family
from hpcrobust.models.loading import model_config, resolve
from hpcrobust.models.precision import check_checkpointing
from hpcrobust.parallel.collectives import agree
from hpcrobust.parallel.comm import Comm
from hpcrobust.store.results import ResultsFile
from hpcrobust.sweep import checkpoint, debug
from hpcrobust.sweep.examples import sweep_examples
from hpcrobust.sweep.inputs import input_digests
from hpcrobust.sweep.plan import SweepPlan
from hpcrobust.tasks import TaskData, load_pool
from hpcrobust.tracking import check as check_tracking


def vocab_sizes(cfg: SweepConfig) -> list[int]:
    sizes = []
    for i, m in enumerate(cfg.models):
        hf = model_config(m, cfg.family, f"models.{i}", f"models.{i}.trust_remote_code")
        if hf is not None and m.gradient_checkpointing:
            check_checkpointing(hf, f"models.{i}")
        sizes.append(cfg.family.vocab_size if hf is None else int(hf.vocab_size))
    return sizes


def _attacks(cfg: SweepConfig):
    for group in ("attacks", "train_attacks"):
        for i, a in enumerate(getattr(cfg, group)):
            yield f"{group}.{i} ({a.name})", a


def _env(cfg: SweepConfig, vocabs: list[int]) -> CheckEnv:
    return CheckEnv(cfg.models, [resolve(m, cfg.family).path for m in cfg.models], vocabs, cfg.family)


def check_counts(cfg: SweepConfig, task: TaskData) -> None:
    """Counts of examples never exceed what the task has (nothing is silently clipped). `task` may be the
    pool (before long examples are dropped): the sweep then has exactly n_train / n_val, or stops."""
    n_val = min(len(task.val), cfg.task.n_val)
    n_train = cfg.task.n_train if task.shared else min(len(task.train), cfg.task.n_train)
    for i, a in enumerate(cfg.attacks):
        if a.n_examples > n_val:
            raise UserError(f"attacks.{i} ({a.name}): n_examples {a.n_examples} is more than the"
                            f" {n_val} validation examples (task.n_val)")
    trains = cfg.advtrain.rounds > 0 or any(m.rounds > 0 for m in cfg.models)
    if trains and cfg.advtrain.n_new_examples > n_train:
        raise UserError(f"advtrain.n_new_examples: {cfg.advtrain.n_new_examples} is more than the"
                        f" {n_train} training examples (task.n_train)")


def before_work(cfg: SweepConfig) -> tuple[ResultsFile, TaskData]:
    """Models, task, attacks, the output's place and the tracker; returns the results file and the task's
    pool (`sweep_examples` keeps the examples that fit, once the tokenizers exist)."""
    for m in cfg.models:
        resolve(m, cfg.family)
    vocabs = vocab_sizes(cfg)
    task = load_pool(cfg.task)
    check_counts(cfg, task)
    env = _env(cfg, vocabs)
    for key, a in _attacks(cfg):
        for extra in a.plugin.extra_models(a, cfg.family):
            model_config(extra, cfg.family, key)
        a.plugin.check(a, key, env)
    results = ResultsFile(cfg.output)
    results.check_place()
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


def resumable(results: ResultsFile, plan: SweepPlan, identity: str, inputs: dict[str, str]) -> None:
    """An existing file holds this sweep, and every committed round that a later round starts from still has
    its checkpoint (a rerun would otherwise fail hours in, or train on an empty pool)."""
    results.check_same_sweep(identity, to_dict(plan.cfg), inputs)
    done = results.committed_rounds()
    for run in plan.runs:
        rounds = done.get(run.key, set())
        if not rounds or max(rounds) >= plan.n_rounds(run):
            continue
        last = max(rounds)
        missing = checkpoint.missing_files(results, run.key, last)
        if missing:
            raise UserError(f"{results.path}: round {last} of {run.key} is committed, but its checkpoint"
                            f" {results.checkpoint_dir(run.key, last)} lacks {', '.join(missing)}; restore it, or"
                            f" start a new output")


@dataclass
class Prepared:
    results: ResultsFile
    task: TaskData
    plan: SweepPlan


def prepare(cfg: SweepConfig, comm: Comm, source: str, quiet: bool = False) -> Prepared:
    """Every check, in order, agreed across `comm`; builds the built-in family (on rank 0) on the way."""

    def named(fn):
        def wrapped():
            try:
                return fn()
            except UserError as exc:
                raise UserError(f"{source}: {exc}") from None
        return wrapped

    root = comm.rank == 0
    agree(comm, lambda: debug.fail_in_checks(cfg.debug, comm.rank))  # test-only (debug.fail_in: checks)
    results, pool = agree(comm, named(lambda: before_work(cfg)))
    sizes = agree(comm, named(lambda: builtin_sizes(cfg)))
    agree(comm, lambda: family.ensure_built(cfg.family, sizes, show_progress=not quiet) if root and sizes else None)
    agree(comm, named(lambda: with_tokenizers(cfg)))
    task = agree(comm, named(lambda: sweep_examples(cfg, pool)))  # the same examples on every rank
    inputs = comm.bcast(agree(comm, named(lambda: input_digests(cfg) if root else None)))
    identity = science_hash(cfg, inputs)
    plan = agree(comm, named(lambda: SweepPlan(cfg, identity, yaml.safe_dump(inputs, sort_keys=True))))
    agree(comm, named(lambda: resumable(results, plan, identity, inputs) if root else None))
    return Prepared(results, task, plan)
