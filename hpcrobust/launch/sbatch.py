"""`hpcrobust sbatch`: render a plain sbatch script from slurm_templates/, for users without submitit.

Templates hold `{{name}}` placeholders. Every value is inserted shell-quoted (shlex.quote), so a value
with quotes, `$()`, backticks or newlines stays one word of data and is never run. `#SBATCH` lines are
read by sbatch, not by the shell: there a newline would end the directive and start shell code, and
sbatch drops backslashes, so such values are refused with one line instead.
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from hpcrobust.config import SweepConfig, directive_safe, load_config, read_text_file
from hpcrobust.errors import UserError
from hpcrobust.launch.plan import job_name, job_nodes_of, log_root, plan_tasks, quote_times

TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "slurm_templates"
PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")


@dataclass(frozen=True)
class Lines:
    """Whole lines (already safe) that replace a placeholder standing alone on its line."""

    lines: tuple[str, ...]


Value = str | int | list[str] | Lines


def sbatch_option(key: str, value: object) -> str:
    """One `#SBATCH --key=value` line, with the value quoted the way sbatch unquotes it (`true`: a bare flag)."""
    if value is True:
        return f"#SBATCH --{key}"
    text = directive_safe(f"#SBATCH --{key}", str(value))
    return f"#SBATCH --{key}={shlex.quote(text)}"


def render(template: str, values: dict[str, Value]) -> str:
    """Fill every placeholder; an unknown one is an error, so a typo cannot leave `{{x}}` in a script."""
    out = []
    for n, line in enumerate(template.splitlines(), 1):
        names = PLACEHOLDER.findall(line)
        for name in names:
            if name not in values:
                raise UserError(f"template line {n}: unknown placeholder {{{{{name}}}}}")
        if len(names) == 1 and isinstance(values[names[0]], Lines):
            if PLACEHOLDER.fullmatch(line.strip()) is None:
                raise UserError(f"template line {n}: {{{{{names[0]}}}}} must stand alone on its line")
            out.extend(values[names[0]].lines)
            continue
        directive = line.lstrip().startswith("#SBATCH")

        def fill(m: re.Match, directive: bool = directive, n: int = n) -> str:
            v = values[m.group(1)]
            if isinstance(v, Lines):
                raise UserError(f"template line {n}: {{{{{m.group(1)}}}}} must stand alone on its line")
            if isinstance(v, list):
                if directive:
                    raise UserError(f"template line {n}: a list cannot go into an #SBATCH line")
                return " ".join(shlex.quote(str(x)) for x in v)
            text = str(v)
            if directive:
                directive_safe(m.group(1), text)
            return shlex.quote(text)

        out.append(PLACEHOLDER.sub(fill, line))
    return "\n".join(out) + "\n"


def template_values(config: Path, cfg: SweepConfig, overrides: list[str], workdir: Path) -> dict[str, Value]:
    launch = cfg.launch
    tasks = plan_tasks(cfg, overrides)
    array = launch.array_over != "none"
    options = []
    for key, value in (("partition", launch.slurm_partition), ("account", launch.slurm_account),
                       ("qos", launch.slurm_qos), ("constraint", launch.slurm_constraint)):
        if value:
            options.append(sbatch_option(key, value))
    if launch.gpus_per_node:
        options.append(sbatch_option("gpus-per-node", launch.gpus_per_node))
    if array:
        parallel = min(len(tasks), launch.slurm_array_parallelism)
        options.append(sbatch_option("array", f"0-{len(tasks) - 1}%{parallel}"))
    for key, value in launch.sbatch_flags().items():
        options.append(sbatch_option(key.replace("_", "-"), value))
    mem = f"{int(launch.mem_gb)}G" if launch.mem_gb == int(launch.mem_gb) else f"{int(launch.mem_gb * 1024)}M"
    logs = log_root(launch.folder)
    return {
        "job_name": job_name(config, cfg.experiment), "nodes": job_nodes_of(cfg, tasks, config),
        "tasks_per_node": launch.tasks_per_node,
        "cpus_per_task": launch.cpus_per_task, "mem": mem, "time": launch.minutes(),
        "signal_delay_s": launch.slurm_signal_delay_s,
        "log_file": str(logs / ("%x-%A_%a.out" if array else "%x-%j.out")),
        "options": Lines(tuple(options)), "workdir": str(workdir), "srun_args": list(launch.slurm_srun_args),
        "python": sys.executable, "config": str(config), "overrides": list(overrides),
        "task_seeds": [t.extra[0] for t in tasks] if array else [],
        "task_outputs": [t.extra[1] for t in tasks] if array else [],
    }


def find_template(name: str, array: bool) -> Path:
    if not name:
        name = "sweep_array.sbatch" if array else "sweep.sbatch"
    path = Path(name)
    if not path.is_file():
        path = TEMPLATE_DIR / name
    if not path.is_file():
        raise UserError(f"sbatch template not found: {name} (looked in {TEMPLATE_DIR})")
    return path


def render_config(config: str, overrides: list[str], template: str = "") -> str:
    """The ready script for CONFIG; creates the log folder, since sbatch will not."""
    overrides = quote_times(overrides)
    cfg = load_config(config, overrides)
    path = find_template(template, cfg.launch.array_over != "none")
    values = template_values(Path(config).absolute(), cfg, overrides, Path.cwd())
    text = render(read_text_file(path, "sbatch template"), values)
    log_root(cfg.launch.folder).mkdir(parents=True, exist_ok=True)
    return text
