"""The `submit` and `sbatch` commands: what they print and how they end (0 ok, 1 job failed, 2 user error)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TextIO

from hpcrobust.launch.plan import TaskSpec
from hpcrobust.launch.queue import JobInfo, wait_until_ended
from hpcrobust.launch.submit import make_plan, print_dry_run, submit


def _outcome(job: Any) -> tuple[str, Any]:
    """Task 0's result pickle, read directly: submitit's result() would wait forever if there is none."""
    from submitit.core.utils import pickle_load

    path = Path(job.paths.result_pickle)
    if not path.exists():
        return "missing", None
    return pickle_load(path)


def _last_line(text: object) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return lines[-1] if lines else str(text)


def _report(job: Any, task: TaskSpec, out: TextIO, state: str = "") -> bool:
    kind, value = _outcome(job)
    if kind == "success":
        out.write(f"job {job.job_id} done: {task.output}\n")
        return True
    why = _last_line(value) if kind == "error" else f"no result written (state {state or 'unknown'})"
    print(f"hpcrobust: job {job.job_id} failed: {why}; see {job.paths.stderr}", file=sys.stderr)
    return False


def _print_submitted(cluster: str, jobs: list, tasks: list[TaskSpec], params: dict, out: TextIO) -> None:
    where = ""
    if cluster == "slurm":
        where = (f" partition {params['partition']}, {params['nodes']} node(s) x {params['ntasks_per_node']}"
                 f" task(s)")
    for job, task in zip(jobs, tasks, strict=True):
        out.write(f"submitted job {job.job_id} ({cluster}{where}): {task.describe()}\n")
        out.write(f"log folder: {job.paths.folder}\n")
    if cluster == "slurm":
        ids = ",".join(str(j.job_id) for j in jobs)
        out.write(f"monitor: squeue -j {ids}   (stderr of rank 0: {jobs[0].paths.stderr})\n")
        out.write("resume: run the same `hpcrobust submit` command again; committed rounds are skipped\n")
    out.flush()


def submit_command(config: str, overrides: list[str], cluster: str = "slurm", dry_run: bool = False,
                   wait: bool = False, wait_timeout_s: float = 7 * 24 * 3600, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    plan = make_plan(config, overrides, cluster, dry_run)
    if dry_run:
        print_dry_run(plan, out)
        return 0
    jobs = submit(plan)
    _print_submitted(cluster, jobs, plan.tasks, plan.parameters, out)
    if cluster == "slurm" and not wait:
        return 0
    ok = True
    if cluster == "slurm":
        def show(info: JobInfo) -> None:
            again = f", requeued {info.restarts}x" if info.restarts else ""
            print(f"hpcrobust: job {info.job_id}: {info.state}{again}", file=sys.stderr, flush=True)

        infos = wait_until_ended([str(j.job_id) for j in jobs], wait_timeout_s, poll_s=2.0, on_change=show)
        for job, task in zip(jobs, plan.tasks, strict=True):
            ok &= _report(job, task, out, infos[str(job.job_id)].state)
        return 0 if ok else 1
    for job, task in zip(jobs, plan.tasks, strict=True):  # local and debug: run now (debug: in this process)
        if cluster == "debug":  # DebugJob.result() would open pdb on an error; run the submission itself
            try:
                job.submission().result()
                out.write(f"job {job.job_id} done: {task.output}\n")
            except Exception as exc:  # noqa: BLE001 - one line, like every other failure
                print(f"hpcrobust: job {job.job_id} failed: {_last_line(exc)}", file=sys.stderr)
                ok = False
            continue
        try:
            job.result()
        except Exception:  # noqa: BLE001 - reported from the result pickle, in one line
            pass
        ok &= _report(job, task, out)
    return 0 if ok else 1

def sbatch_command(config: str, overrides: list[str], template: str = "", out: TextIO | None = None) -> int:
    from hpcrobust.launch.sbatch import render_config

    out = out or sys.stdout
    out.write(render_config(config, overrides, template))
    return 0
