"""`hpcrobust run`: the same entry for a plain process, `mpiexec -n K` and `srun`.

All ranks agree on user errors before any work starts, so a bad config is one line and exit 2
on every rank. After that, any exception on any rank aborts the whole MPI job at once, so no rank
is left waiting in a collective.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from hpcrobust import log as logmod
from hpcrobust.config import SweepConfig, load_config
from hpcrobust.errors import UserError
from hpcrobust.models import family
from hpcrobust.parallel.comm import Comm, world
from hpcrobust.parallel.layout import Layout, make_layout
from hpcrobust.store.results import ResultsFile
from hpcrobust.store.writer import mpio_available
from hpcrobust.sweep import checks, debug
from hpcrobust.sweep.context import SweepContext
from hpcrobust.sweep.driver import drive
from hpcrobust.sweep.hooks import Hooks
from hpcrobust.sweep.plan import SweepPlan
from hpcrobust.tasks import TaskData
from hpcrobust.tracking import attach as attach_tracker

T = TypeVar("T")


def agree(comm: Comm, fn: Callable[[], T]) -> T:
    """Run `fn` on every rank; if it raises a user error anywhere, every rank raises the first one."""
    try:
        value, err = fn(), None
    except UserError as exc:
        value, err = None, str(exc)
    errors = [e for e in comm.allgather(err) if e]
    if errors:
        exc = UserError(errors[0])
        exc.agreed = True  # every rank raises it: nobody is left in a collective
        raise exc
    return value


def run_command(config: str, overrides: list[str], quiet: bool = False, hooks: Hooks | None = None) -> int:
    w = world()
    logmod.setup(w.rank, w.size, quiet)
    try:
        cfg = agree(w, lambda: load_config(config, overrides))
        return run_config(cfg, quiet=quiet, source=config, hooks=hooks)
    except UserError as exc:
        if w.rank == 0:
            print(f"hpcrobust: error: {exc}", file=sys.stderr, flush=True)
        return 2


def _from(source: str, fn: Callable[[], T]) -> Callable[[], T]:
    """Name the config file in errors found while checking what it points to."""

    def wrapped() -> T:
        try:
            return fn()
        except UserError as exc:
            raise UserError(f"{source}: {exc}") from None

    return wrapped


def run_config(cfg: SweepConfig, quiet: bool = False, source: str = "config", hooks: Hooks | None = None) -> int:
    w = world()
    logmod.setup(w.rank, w.size, quiet)
    hooks = hooks or Hooks()
    debug.attach(hooks, cfg.debug)
    layout = agree(w, _from(source, lambda: make_layout(cfg.parallel)))
    results, task = agree(w, _from(source, lambda: checks.before_work(cfg)))
    sizes = agree(w, _from(source, lambda: checks.builtin_sizes(cfg)))
    tracker = attach_tracker(hooks, cfg.tracking, cfg.experiment or Path(source).stem, results.path)
    agree(w, _from(source, lambda: tracker.connect() if tracker is not None and w.rank == 0 else None))
    agree(w, lambda: results.acquire() if w.rank == 0 else None)
    try:
        if w.rank == 0:
            results.clean_stale()
        return _guarded(layout.world, lambda: _work(cfg, layout, task, results, sizes, hooks, quiet, source))
    finally:
        if tracker is not None:
            tracker.close()  # after sweep_finished a no-op; after a stop or an error it ends the tracker runs
        results.release()


def _work(cfg: SweepConfig, layout: Layout, task: TaskData, results: ResultsFile, sizes: list[str], hooks: Hooks,
          quiet: bool, source: str) -> int:
    if sizes and layout.is_root:
        family.ensure_built(cfg.family, sizes, show_progress=not quiet)
    layout.world.barrier()
    agree(layout.world, _from(source, lambda: checks.with_tokenizers(cfg)))
    w = layout.world
    writer_kind = "parallel HDF5 (mpio)" if w.size > 1 and mpio_available() else "gathered to rank 0"
    logmod.log(f"{w.size} rank(s) in {layout.n_groups} group(s); device {layout.device},"
               f" {layout.threads} thread(s) per rank; results writer: {writer_kind}")
    drive(SweepContext(cfg, layout, task, results, SweepPlan(cfg), hooks))
    layout.world.barrier()
    logmod.log(f"done: {results.path}")
    return 0


def _guarded(comm: Comm, fn: Callable[[], int]) -> int:
    """Past the checks, an exception on one rank ends all ranks: print it once, then abort."""
    try:
        return fn()
    except SystemExit:  # every rank reaches the same deliberate exit (debug.stop_after_round, a safe stop)
        raise
    except UserError as exc:
        if getattr(exc, "agreed", False):
            if comm.rank == 0:
                print(f"hpcrobust: error: {exc}", file=sys.stderr, flush=True)
            return 2
        logmod.error_line(str(exc))
        comm.abort(2)
    except BaseException:
        prefix = f"[rank {comm.rank}] " if comm.size > 1 else ""
        sys.stderr.write(prefix + traceback.format_exc().rstrip("\n").replace("\n", "\n" + prefix) + "\n")
        sys.stderr.flush()
        comm.abort(1)
    return 1
