"""The test-only `debug.*` switches, as hooks: a failure on one rank, a stop after a committed round."""

from __future__ import annotations

from hpcrobust.config import DebugConfig
from hpcrobust.errors import RankFailure
from hpcrobust.sweep.hooks import Hooks


def attach(hooks: Hooks, debug: DebugConfig) -> None:
    if debug.fail_rank >= 0:
        def fail(ctx, rnd: int) -> None:
            if ctx.layout.world.rank == debug.fail_rank and rnd == debug.fail_round:
                raise RankFailure(f"injected failure on rank {debug.fail_rank} in round {rnd} (debug.fail_rank)")

        hooks.on("round_started", fail)
    if debug.stop_after_round >= 0:
        def stop(ctx, rnd: int, n: int) -> None:
            if rnd == debug.stop_after_round:
                raise SystemExit(3)

        hooks.on("round_committed", stop)
