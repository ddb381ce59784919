"""`hpcrobust run`: the same entry for a plain process, `mpiexec -n K` and `srun`.

All ranks agree on every error found before work starts (sweep/checks.py), so a bad config is one line
and exit 2 on every rank, and nothing is written. Only then is the results file locked. After that, any
exception on any rank aborts the whole MPI job at once, so no rank is left waiting in a collective.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from hpcrobust import log as logmod
from hpcrobust.config import SweepConfig, load_config
from hpcrobust.errors import AgreedFailure, UserError
from hpcrobust.parallel.collectives import agree
from hpcrobust.parallel.comm import Comm, world
from hpcrobust.parallel.distributed import shutdown as shutdown_torch_distributed
from hpcrobust.parallel.layout import Layout, make_layout
from hpcrobust.store.writer import mpio_available
from hpcrobust.sweep import checks, debug, savemarks
from hpcrobust.sweep.checks import Prepared
from hpcrobust.sweep.context import SweepContext
from hpcrobust.sweep.driver import drive
from hpcrobust.sweep.hooks import Hooks
from hpcrobust.tracking import attach as attach_tracker


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
    except AgreedFailure as exc:  # an unexpected error on some rank during the checks
        if w.rank == 0:
            print(str(exc), file=sys.stderr, flush=True)
        return 1


def run_config(cfg: SweepConfig, quiet: bool = False, source: str = "config", hooks: Hooks | None = None) -> int:
    started = time.time()  # the attempt's device-hours count from here
    w = world()
    logmod.setup(w.rank, w.size, quiet)
    hooks = hooks or Hooks()
    debug.attach(hooks, cfg.debug)
    savemarks.attach(hooks)  # which groups saved their work in progress after a USR2 (launch/safestop.py)
    layout = agree(w, lambda: _named(source, lambda: make_layout(cfg.parallel, cfg.models, len(cfg.seeds))))
    ready = checks.prepare(cfg, w, source, quiet)
    tracker = attach_tracker(hooks, cfg.tracking, cfg.experiment or Path(source).stem, ready.results.path)
    agree(w, lambda: _named(source, lambda: tracker.connect() if tracker is not None and w.rank == 0 else None))
    holder = {"ranks": w.size, "groups": layout.n_groups}  # for `hpcrobust status`'s estimate of the time left
    agree(w, lambda: ready.results.acquire(holder) if w.rank == 0 else None)
    try:
        if w.rank == 0:
            ready.results.clean_stale()
        return _guarded(layout.world, lambda: _work(cfg, layout, ready, hooks, started))
    finally:
        if tracker is not None:
            tracker.close()  # after sweep_finished a no-op; after a stop or an error it ends the tracker runs
        ready.results.release()


def _named(source: str, fn: Callable):
    """Name the config file in errors found while checking what it points to."""
    try:
        return fn()
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from None


def _work(cfg: SweepConfig, layout: Layout, ready: Prepared, hooks: Hooks, started: float) -> int:
    w = layout.world
    writer_kind = "parallel HDF5 (mpio)" if w.size > 1 and mpio_available() else "gathered to rank 0"
    logmod.log(f"{layout.describe()}; device {layout.device},"
               f" {layout.threads} thread(s) per rank; results writer: {writer_kind}")
    drive(SweepContext(cfg, layout, ready.task, ready.results, ready.plan, hooks, started))
    layout.world.barrier()
    shutdown_torch_distributed()  # every rank, also those of one-rank groups, when any group made one
    logmod.log(f"done: {ready.results.path}")
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
