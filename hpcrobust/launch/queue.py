"""Asking SLURM about a job with `scontrol`, which works without accounting (sacct needs a database).

submitit's `job.result()` waits for a result pickle and waits forever when a job dies without one,
so `--wait` and the tests poll the queue instead and read the pickle only once the job has ended.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass

ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE",
         "PREEMPTED", "SPECIAL_EXIT"}


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    state: str  # PENDING, RUNNING, COMPLETED, ... or GONE once slurmctld has forgotten the job
    restarts: int = 0
    reason: str = ""

    @property
    def ended(self) -> bool:
        return self.state in ENDED or self.state == "GONE"


def job_info(job_id: str, timeout_s: float = 30) -> JobInfo:
    """One `scontrol show job -o`: state, restart count (requeues) and the pending reason."""
    try:
        proc = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True,
                              timeout=timeout_s)
    except (OSError, subprocess.SubprocessError):
        return JobInfo(str(job_id), "UNKNOWN")
    if proc.returncode != 0 or "JobState=" not in proc.stdout:
        return JobInfo(str(job_id), "GONE" if "Invalid job id" in proc.stderr else "UNKNOWN")
    fields = dict(tok.split("=", 1) for tok in proc.stdout.split() if "=" in tok)
    return JobInfo(str(job_id), fields.get("JobState", "UNKNOWN"), int(fields.get("Restarts", "0") or 0),
                   fields.get("Reason", ""))


def accounting_state(job_id: str, timeout_s: float = 10) -> str:
    """The job's state from `sacct` (for a job slurmctld has forgotten); "" when there is no accounting."""
    try:
        proc = subprocess.run(["sacct", "-j", str(job_id), "-X", "-n", "-P", "-o", "State"], capture_output=True,
                              text=True, timeout=timeout_s)
    except (OSError, subprocess.SubprocessError):
        return ""
    lines = [ln.split()[0] for ln in proc.stdout.splitlines() if ln.strip()] if proc.returncode == 0 else []
    return lines[-1] if lines else ""  # "CANCELLED by 0" -> CANCELLED; a requeued job's last line is its latest


def wait_until_ended(job_ids: list[str], timeout_s: float, poll_s: float = 1.0,
                     on_change=None) -> dict[str, JobInfo]:
    """Poll until every job has ended (or timeout_s passes); `on_change(info)` sees every state change."""
    last: dict[str, JobInfo] = {}
    deadline = time.monotonic() + timeout_s
    while True:
        for jid in job_ids:
            info = job_info(jid)
            if on_change is not None and last.get(jid) != info:
                on_change(info)
            last[jid] = info
        if all(i.ended for i in last.values()) or time.monotonic() > deadline:
            return last
        time.sleep(poll_s)
