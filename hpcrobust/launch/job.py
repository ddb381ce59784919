"""The callable that submitit runs on every SLURM task: `hpcrobust run`, plus preemption handling.

Each SLURM task is one MPI rank (srun starts them; mpi4py finds its peers through PMI), and each runs
`hpcrobust.sweep.command.run_command` on the config frozen at submission, so a submitted sweep stores what
`mpiexec -n K hpcrobust run` stores. A requeued job calls the same callable again (through
`checkpoint()`), and the sweep skips every committed round: that is the whole resume.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from hpcrobust.launch.safestop import SafeStop, StopAtSafePoint


class SweepFailed(RuntimeError):
    """The sweep in the job ended with a non-zero exit code (its error line is in the job's stderr log)."""


@dataclass
class SweepJob:
    config: str  # the config file frozen at submission (absolute)
    overrides: list[str] = field(default_factory=list)
    workdir: str = "."  # the submitting directory, so relative paths in the config mean the same
    safe_stop_s: float = 60.0
    quiet: bool = False
    attempt: int = 0  # how many times this job was requeued; shows in the logs

    def __call__(self) -> dict:
        from hpcrobust.parallel.comm import world
        from hpcrobust.sweep.command import run_command
        from hpcrobust.sweep.hooks import Hooks

        os.chdir(self.workdir)
        rank = _task_rank()
        code = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
        print(f"hpcrobust job: attempt {self.attempt} (SLURM restart count {restarts}), task {rank}, code from"
              f" {code}", file=sys.stderr, flush=True)
        stop = SafeStop(self.safe_stop_s, on_timeout=lambda: self._requeue_now(stop, rank))
        try:
            with stop:
                rc = run_command(self.config, list(self.overrides), quiet=self.quiet, hooks=stop.attach(Hooks()))
        except StopAtSafePoint as exc:
            w = world()
            print(f"hpcrobust job: rank {w.rank} stopped after a committed round ({exc.signame})",
                  file=sys.stderr, flush=True)
            if w.rank == 0:
                self._requeue_now(stop, 0)
            raise SystemExit(0) from None  # other ranks: rank 0 requeues; write no result for this attempt
        if rc != 0:
            raise SweepFailed(f"hpcrobust run exited with code {rc}; its error is in this task's stderr log")
        w = world()
        return {"rank": w.rank, "size": w.size, "returncode": rc, "overrides": list(self.overrides)}

    def _requeue_now(self, stop: SafeStop, rank: int) -> None:
        """Rank 0 hands over to submitit: dump `checkpoint()`, `scontrol requeue`, exit."""
        if rank != 0:
            return
        handler = stop.submitit_handler()
        if handler is None:  # not inside a submitit job (debug executor): nothing can requeue us
            raise SweepFailed("stopped by a signal outside a submitit job; rerun the same command to resume")
        import signal

        handler(signal.SIGUSR2, None)

    def checkpoint(self, *args: object, **kwargs: object):
        """submitit calls this on preemption/timeout: the state is on disk, so resubmit the same sweep."""
        import submitit

        nxt = SweepJob(self.config, list(self.overrides), self.workdir, self.safe_stop_s, self.quiet,
                       self.attempt + 1)
        return submitit.helpers.DelayedSubmission(nxt)


def _task_rank() -> int:
    for var in ("SLURM_PROCID", "SUBMITIT_LOCAL_GLOBALID", "PMI_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    return 0
