"""Turn a preemption or time-limit signal into a stop at the next committed round.

SLURM sends USR2 before the time limit (`--signal=USR2@delay`, added by submitit) and on
`scancel --signal=USR2`, and SIGTERM when it preempts a job with a grace time (a SIGTERM from
`scancel`, which SLURM sends after it has ended the job, still kills). submitit's own handler requeues at
once, wherever the ranks are. Here every rank only notes the signal; the ranks then agree, right
after the next round is committed (a collective point that all of them reach), to stop together.
Only then does rank 0 hand over to submitit, which checkpoints and requeues the job. If no commit
comes within `grace_s`, rank 0 requeues mid-round: commits are atomic, so the file keeps every
committed round and the requeued job goes on with the round in progress from what it kept
(sweep/progress.py: training steps, the state of a running attack, the training attack, finished evaluation
attacks).

The check is attached to the sweep's `round_committed` hook (sweep/hooks.py), which every rank
fires right after each commit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Callable
from typing import Any

from hpcrobust.log import log
from hpcrobust.sweep.hooks import Hooks


class StopAtSafePoint(SystemExit):
    """Raised on every rank at once after a commit, so the sweep unwinds (and releases its lock) cleanly."""

    def __init__(self, signame: str) -> None:
        super().__init__(0)
        self.signame = signame


def slurm_is_ending_the_job() -> bool:
    """SIGTERM also comes with `scancel`, a hard time limit or a preemption without grace. Then SLURM has
    already moved the job out of RUNNING (COMPLETING, CANCELLED, ...): die as it expects, never requeue over
    a cancel. A TERM while the job is still RUNNING (preemption with a grace time) is a request to stop."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return True  # not under SLURM: TERM keeps its usual meaning
    try:
        out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return True
    return "JobState=RUNNING" not in out.stdout


class SafeStop:
    """Context manager: signals request a stop; the stop happens after the next commit (or after grace_s)."""

    SIGNALS = (signal.SIGUSR2, signal.SIGTERM)

    def __init__(self, grace_s: float, on_timeout: Callable[[], None]) -> None:
        self.grace_s = grace_s
        self.on_timeout = on_timeout  # rank 0: checkpoint and requeue now
        self.requested: str | None = None
        self._saved: dict[int, Any] = {}

    # ---------------------------------------------------------------- signals
    def _on_signal(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGTERM and slurm_is_ending_the_job():
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # e.g. scancel: die as SLURM expects
            os.kill(os.getpid(), signal.SIGTERM)
            return
        if self.requested is None:
            self.requested = name
            log(f"caught {name}: stopping after the next committed round (at most {self.grace_s:g} s)",
                all_ranks=True)
            signal.setitimer(signal.ITIMER_REAL, max(self.grace_s, 0.01))

    def _on_alarm(self, signum: int, frame: Any) -> None:
        log(f"no round committed within {self.grace_s:g} s of {self.requested}: requeueing mid-round"
            " (committed rounds are kept)", all_ranks=True)
        self.on_timeout()

    # ---------------------------------------------------------------- the safe point
    def after_commit(self, ctx: Any, rnd: int, n: int) -> None:
        """The `round_committed` hook: every rank is here, so they can agree to stop together."""
        if ctx.layout.world.allreduce_max(1.0 if self.requested else 0.0) > 0:
            signal.setitimer(signal.ITIMER_REAL, 0)
            raise StopAtSafePoint(self.requested or "a signal on another rank")

    def attach(self, hooks: Hooks) -> Hooks:
        hooks.on("round_committed", self.after_commit)
        return hooks

    def __enter__(self) -> SafeStop:
        if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
            self._saved = {s: signal.getsignal(s) for s in (*self.SIGNALS, signal.SIGALRM)}
            for s in self.SIGNALS:
                signal.signal(s, self._on_signal)
            signal.signal(signal.SIGALRM, self._on_alarm)
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self._saved:
            return
        signal.setitimer(signal.ITIMER_REAL, 0)
        for s, h in self._saved.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)

    def submitit_handler(self) -> Callable[[int, Any], None] | None:
        """submitit's USR2 handler (checkpoint, `scontrol requeue`, exit), if this process runs a submitit job."""
        h = self._saved.get(signal.SIGUSR2)
        return h if callable(h) and getattr(h, "__name__", "") == "checkpoint_and_try_requeue" else None
