"""`hpcrobust` command line. Exit codes: 0 success, 2 user error (one line), 1 anything else."""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from hpcrobust import __version__
from hpcrobust.errors import UserError

CONFIG_HELP = "YAML config file (see configs/ and the README's table of keys)"
OVERRIDE_HELP = "override a config key, e.g. finetune.lr=1e-4 models.0.name_or_path=builtin:m output=b.h5"


def _keys_epilog() -> str:
    from hpcrobust.config import describe

    lines = ["config keys (key: default  what it does):"]
    for key, default, doc in describe():
        lines.append(f"  {key}: {default}  {doc}")
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, epilog_fn=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.epilog_fn = epilog_fn  # built only when help is shown: it imports every attack plug-in (torch)

    def format_help(self) -> str:
        if self.epilog_fn is not None:
            self.epilog = self.epilog_fn()
        return super().format_help()

    def error(self, message: str) -> None:  # one line, exit 2
        raise UserError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="hpcrobust", description="Scaling trends in language-model adversarial robustness:"
                " fine-tune, attack and adversarially train classifiers of several sizes, on MPI ranks"
                " and SLURM, into one HDF5 results file.")
    p.add_argument("--version", action="version", version=f"hpcrobust {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = sub.add_parser("run", help="run a sweep here (plain, under mpiexec, or under srun)",
                         description="Run a sweep in this process group: plain (1 rank), under `mpiexec -n K`,"
                         " or under `srun`. Committed rounds in an existing output are skipped.",
                         epilog_fn=_keys_epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("config", help=CONFIG_HELP)
    run.add_argument("overrides", nargs="*", metavar="key.sub=value", help=OVERRIDE_HELP)
    run.add_argument("--quiet", action="store_true", help="no log lines and no progress bar")
    _add_launch_commands(sub)
    from hpcrobust.planner import command as plan_cli

    plan_cli.add_parser(sub)
    from hpcrobust.analysis import cli as analysis_cli

    analysis_cli.add_parser(sub)
    analysis_cli.add_export_parser(sub)
    convert = sub.add_parser("convert", help="turn a public dataset's files into a file task's JSONL",
                             description="hh-rlhf: Anthropic HH-RLHF pairs (a folder such as helpful-base/ with"
                             " train.jsonl(.gz) and test.jsonl(.gz), or one such file) -> the paper's two-conversation"
                             " task (text, label, split) for task.name helpful or harmless.")
    convert.add_argument("format", choices=("hh-rlhf",), help="what IN is")
    convert.add_argument("src", metavar="IN", help="folder or file to read")
    convert.add_argument("out", metavar="OUT", help="JSONL file to write (task.path)")
    convert.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0, as the reference)")
    return p


def _add_launch_commands(sub) -> None:
    """`submit`, `sbatch` and `status` (hpcrobust.launch): the same sweep, handed to SLURM and watched."""
    submit = sub.add_parser("submit", help="submit the sweep with submitit (SLURM; local/debug to try it)",
                            description="Submit the sweep with submitit. SLURM resources come from the config's"
                            " launch.* keys; each SLURM task is one MPI rank. Prints the job ids and the log"
                            " folder. A preempted or timed-out job stops after its next committed round and"
                            " requeues; submitting the same command again also resumes. Exit 2: a bad config"
                            " or SLURM refused the job (one line).")
    submit.add_argument("config", help=CONFIG_HELP)
    submit.add_argument("overrides", nargs="*", metavar="key.sub=value", help=OVERRIDE_HELP)
    submit.add_argument("--cluster", choices=("slurm", "local", "debug"), default="slurm",
                        help="slurm (default); local: a subprocess here; debug: in this process")
    submit.add_argument("--dry-run", action="store_true", help="print the sbatch script and parameters only")
    submit.add_argument("--wait", action="store_true", help="slurm: wait for the job(s) to end (local and"
                        " debug always wait); exit 1 if one failed")
    sbatch = sub.add_parser("sbatch", help="print a plain sbatch script (srun + mpi4py) from slurm_templates/",
                            description="Print a ready sbatch script for CONFIG, rendered from slurm_templates/"
                            " with every value shell-quoted; for clusters used without submitit.")
    sbatch.add_argument("config", help=CONFIG_HELP)
    sbatch.add_argument("overrides", nargs="*", metavar="key.sub=value", help=OVERRIDE_HELP)
    sbatch.add_argument("--template", default="", help="template file or name in slurm_templates/ (default:"
                        " sweep.sbatch, or sweep_array.sbatch with launch.array_over)")
    status = sub.add_parser("status", help="progress of a sweep from its results file (safe while it runs)",
                            description="Where a sweep stands, read from its results file, its lock and its"
                            " checkpoint folder (and SLURM, when the lock names a job): a run x round grid,"
                            " wall time and device-hours per round, ASR so far, and an estimate of the time"
                            " left. It only reads, so it is safe while the sweep writes. See the README's"
                            " `hpcrobust status` section for the meaning of each column.")
    status.add_argument("file", metavar="FILE", help="the sweep's results file (the config's `output`)")
    status.add_argument("--watch", nargs="?", type=_seconds, const=30.0, default=None, metavar="SECONDS",
                        help="redraw every SECONDS (default 30) until the sweep has finished; Ctrl-C stops")
    status.add_argument("--job", default="", metavar="ID", help="the SLURM job to ask about (default: the one"
                        " named in the lock while a job holds it), e.g. a requeued job waiting in the queue")


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r} (write FILE first:"
                                         f" status FILE --watch [SECONDS])") from None
    if not 0.1 <= v <= 86400:
        raise argparse.ArgumentTypeError(f"--watch takes 0.1 to 86400 seconds, got {text!r}")
    return v


def _run(args: argparse.Namespace) -> int:
    from hpcrobust.sweep.command import run_command

    return run_command(args.config, args.overrides, quiet=args.quiet)


def _submit(args: argparse.Namespace) -> int:
    from hpcrobust.launch.commands import submit_command

    return submit_command(args.config, args.overrides, args.cluster, args.dry_run, args.wait)


def _sbatch(args: argparse.Namespace) -> int:
    from hpcrobust.launch.commands import sbatch_command

    return sbatch_command(args.config, args.overrides, args.template)


def _status(args: argparse.Namespace) -> int:
    from hpcrobust.launch.status_view import watch

    return watch(args.file, args.watch, args.job)


def _convert(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hpcrobust.tasks.hh_rlhf import convert

    counts = convert(Path(args.src).expanduser(), Path(args.out).expanduser(), args.seed)
    print(f"wrote {args.out}: " + ", ".join(f"{n} {split}" for split, n in counts.items()))
    return 0


def _plan(args: argparse.Namespace) -> int:
    from hpcrobust.planner.command import plan_command

    return plan_command(args)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if extra:  # overrides given after an option (`run cfg --quiet a.b=1`)
            if not hasattr(args, "overrides") or any("=" not in e or e.startswith("-") for e in extra):
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
            args.overrides = [*args.overrides, *extra]
        if args.command is None:
            build_parser().print_help()
            return 2
        from hpcrobust.analysis import cli as analysis_cli

        handler = {"run": _run, "submit": _submit, "sbatch": _sbatch, "plan": _plan, "analyze": analysis_cli.run,
                   "export": analysis_cli.run_export, "convert": _convert,
                   "status": _status}[args.command]
        return handler(args)
    except UserError as exc:
        print(f"hpcrobust: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hpcrobust: interrupted", file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except Exception:
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
