"""`hpcrobust submit`: check everything, freeze the config and the code, then hand the sweep to submitit.

Every check that can fail on user input runs before sbatch is called (invariant 6): the config, the
SLURM resources, each array task's results file and its lock. What SLURM itself refuses (a partition
or account it does not know, a limit it does not allow) comes back as one line and exit 2, like any
other error in what the user asked for. A `--dry-run` stops after the checks and prints the sbatch
script and parameters; it writes nothing.
"""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from hpcrobust.config import LaunchConfig, SweepConfig, load_config, to_yaml
from hpcrobust.errors import UserError
from hpcrobust.launch.job import SweepJob
from hpcrobust.launch.plan import (
    TaskSpec,
    job_name,
    job_nodes_of,
    log_root,
    plan_tasks,
    quote_times,
    require_partition,
    task_configs,
)

CLUSTERS = ("slurm", "local", "debug")


@dataclass
class Plan:
    """Everything decided before submitting; `--dry-run` prints it."""

    cluster: str
    config: Path
    cfg: SweepConfig
    tasks: list[TaskSpec]
    folder: Path  # submitit's log folder, with %j
    freeze_dir: Path  # frozen config (and code) of this submission
    parameters: dict[str, Any]


def slurm_parameters(launch: LaunchConfig, name: str, setup: list[str], nodes: int) -> dict[str, Any]:
    """SlurmExecutor's own parameter names, from the config's AutoExecutor names (`nodes`: launch.nodes, or
    what the per-size layout needs)."""
    mem = f"{int(launch.mem_gb)}GB" if launch.mem_gb == int(launch.mem_gb) else f"{int(launch.mem_gb * 1024)}MB"
    p: dict[str, Any] = {
        "job_name": name, "partition": launch.slurm_partition, "time": launch.minutes(), "nodes": nodes,
        "ntasks_per_node": launch.tasks_per_node, "cpus_per_task": launch.cpus_per_task, "mem": mem,
        "signal_delay_s": launch.slurm_signal_delay_s, "array_parallelism": launch.slurm_array_parallelism,
        "srun_args": list(launch.slurm_srun_args), "setup": setup,
    }
    if launch.gpus_per_node:
        p["gpus_per_node"] = launch.gpus_per_node
    for key, value in (("account", launch.slurm_account), ("qos", launch.slurm_qos),
                       ("constraint", launch.slurm_constraint)):
        if value:
            p[key] = value
    if launch.slurm_additional_parameters:
        p["additional_parameters"] = {k: v if v is True else str(v) for k, v in launch.sbatch_flags().items()}
    return p


def _check_tasks(config: str, cfgs: list[SweepConfig]) -> None:
    """Every check that `run` makes, for each job that would be queued (the task file, the model folders and
    tokenizers, each attack's own checks, the results file and its checkpoints), and no other sweep may be
    writing a job's file now (the lock is only probed). The built-in family is built here if it is missing."""
    from hpcrobust.parallel.comm import Comm
    from hpcrobust.sweep.checks import prepare

    for cfg in cfgs:
        prepare(cfg, Comm(None), config).results.check_not_locked()


def make_plan(config: str, overrides: list[str], cluster: str, dry_run: bool = False) -> Plan:
    overrides = quote_times(overrides)
    cfg = load_config(config, overrides)
    launch = cfg.launch
    if cluster == "slurm":
        require_partition(launch, config)
        if not dry_run and shutil.which("sbatch") is None:
            raise UserError("sbatch not found: --cluster slurm needs a SLURM login node (try --cluster local)")
    tasks = plan_tasks(cfg, overrides)
    nodes = job_nodes_of(cfg, tasks, config)
    if cluster != "slurm" and nodes * launch.tasks_per_node > 1:
        raise UserError(f"{config}: --cluster {cluster} runs one rank (submitit starts local tasks without MPI);"
                        f" add launch.nodes=1 launch.tasks_per_node=1 (and no models.N.ranks/groups that need"
                        f" more), or use `mpiexec -n K hpcrobust run`")
    _check_tasks(config, task_configs(config, tasks))  # the tracker's extra too: the job runs in this environment
    folder = Path(launch.folder).expanduser().absolute()
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
    freeze_dir = log_root(launch.folder) / "submissions" / stamp
    if cluster == "slurm":
        setup = []
        if launch.freeze_code:
            code = shlex.quote(str(freeze_dir / "code"))
            setup.append(f"export PYTHONPATH={code}${{PYTHONPATH:+:$PYTHONPATH}}")
        params = slurm_parameters(launch, job_name(config, cfg.experiment), setup, nodes)
    elif cluster == "local":
        params = {"timeout_min": launch.minutes(), "tasks_per_node": 1, "gpus_per_node": launch.gpus_per_node,
                  "signal_delay_s": launch.slurm_signal_delay_s}
    else:
        params = {}
    return Plan(cluster, Path(config).absolute(), cfg, tasks, folder, freeze_dir, params)


def _frozen_job(plan: Plan, task: TaskSpec, frozen_config: Path) -> SweepJob:
    """The user's overrides are baked into the frozen config; only the task's own seeds/output remain."""
    return SweepJob(str(frozen_config), list(task.extra), os.getcwd(), plan.cfg.launch.safe_stop_s)


def sbatch_script(plan: Plan) -> str:
    """The script submitit will hand to sbatch (built by submitit's own function, so it is the same text)."""
    from submitit.slurm.slurm import _make_sbatch_string

    params = dict(plan.parameters)
    if len(plan.tasks) > 1:
        params["map_count"] = len(plan.tasks)
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(plan.folder))])
    return _make_sbatch_string(command=command, folder=plan.folder, **params)


def print_dry_run(plan: Plan, out: TextIO) -> None:
    out.write(f"# dry run: nothing submitted, nothing written\n# cluster: {plan.cluster}\n")
    out.write(f"# log folder: {plan.folder}\n# frozen config and code would go to: {plan.freeze_dir}\n")
    kind = f"job array of {len(plan.tasks)} tasks" if len(plan.tasks) > 1 else "one job"
    out.write(f"# {kind}:\n")
    for i, t in enumerate(plan.tasks):
        out.write(f"#   [{i}] {t.describe()}\n")
    out.write("# parameters:\n")
    out.write("".join(f"#   {line}\n" for line in yaml.safe_dump(plan.parameters, sort_keys=True).splitlines()))
    if plan.cluster == "slurm":
        out.write(sbatch_script(plan))
        out.write("\n")


def freeze(plan: Plan) -> Path:
    """Write the resolved config (and, for SLURM, the code) where the queued job will read them."""
    plan.freeze_dir.mkdir(parents=True, exist_ok=True)
    frozen = plan.freeze_dir / "config.yaml"
    frozen.write_text(f"# frozen by `hpcrobust submit` from {plan.config}\n" + to_yaml(plan.cfg))
    if plan.cluster == "slurm" and plan.cfg.launch.freeze_code:
        import hpcrobust

        src = Path(hpcrobust.__file__).resolve().parent
        shutil.copytree(src, plan.freeze_dir / "code" / "hpcrobust",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return frozen


def _executor(plan: Plan):
    import submitit

    launch = plan.cfg.launch
    if plan.cluster == "slurm":
        ex = submitit.SlurmExecutor(folder=plan.folder, max_num_timeout=launch.max_requeues)
    elif plan.cluster == "local":
        ex = submitit.LocalExecutor(folder=plan.folder, max_num_timeout=launch.max_requeues)
    else:
        return submitit.DebugExecutor(folder=plan.folder)
    ex.update_parameters(**plan.parameters)
    return ex


def slurm_error_line(exc: BaseException) -> str:
    """sbatch's own words, on one line: its `error:` lines without the repetition."""
    text = str(exc)
    lines = [ln.strip() for ln in text.splitlines() if "error" in ln.lower() and ln.strip()]
    msgs = []
    for ln in lines:
        msg = ln.split("error:", 1)[-1].strip() if "error:" in ln else ln
        if msg and msg not in msgs and not msg.startswith(("Command", "Error when")):
            msgs.append(msg)
    return "; ".join(msgs) or " ".join(text.split())[:300]


def submit(plan: Plan) -> list:
    import submitit

    frozen = freeze(plan)
    jobs_to_submit = [_frozen_job(plan, t, frozen) for t in plan.tasks]
    ex = _executor(plan)
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # submitit echoes sbatch's stderr; we report it once
            if len(jobs_to_submit) == 1:
                return [ex.submit(jobs_to_submit[0])]
            with ex.batch():
                jobs = [ex.submit(j) for j in jobs_to_submit]
            return jobs
    except (submitit.core.utils.FailedSubmissionError, submitit.core.utils.FailedJobError, OSError) as exc:
        shutil.rmtree(plan.freeze_dir, ignore_errors=True)
        raise UserError(f"SLURM refused the job: {slurm_error_line(exc)}") from None
