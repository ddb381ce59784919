"""The test-only `debug.*` switches, as hooks: a failure on one rank, a stop after a committed round, fake
out-of-memory errors."""

from __future__ import annotations

from hpcrobust.config import DebugConfig
from hpcrobust.errors import RankFailure
from hpcrobust.sweep.hooks import Hooks


def _failure(debug: DebugConfig, where: str) -> RankFailure:
    return RankFailure(f"injected failure on rank {debug.fail_rank} in {where} (debug.fail_rank)")


def fail_in_checks(debug: DebugConfig, rank: int) -> None:
    if debug.fail_in == "checks" and rank == debug.fail_rank:
        raise _failure(debug, "the checks")


def attach(hooks: Hooks, debug: DebugConfig) -> None:
    if debug.fail_rank >= 0 and debug.fail_in != "checks":
        event = "round_started" if debug.fail_in == "round" else "runs_done"

        def fail(ctx, rnd: int) -> None:
            if ctx.layout.world.rank == debug.fail_rank and rnd == debug.fail_round:
                raise _failure(debug, f"round {rnd}" + (" (mid-round)" if debug.fail_in == "mid_round" else ""))

        hooks.on(event, fail)
    if debug.stop_after_round >= 0:
        def stop(ctx, rnd: int, n: int) -> None:
            if rnd == debug.stop_after_round:
                raise SystemExit(3)

        hooks.on("round_committed", stop)
    if debug.fake_oom_above:
        def fake_oom(ctx) -> None:
            if debug.fake_oom_rank in (-1, ctx.layout.world.rank):
                ctx.fake_oom_above = debug.fake_oom_above

        hooks.on("sweep_started", fake_oom)
