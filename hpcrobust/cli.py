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
                         epilog=_keys_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("config", help=CONFIG_HELP)
    run.add_argument("overrides", nargs="*", metavar="key.sub=value", help=OVERRIDE_HELP)
    run.add_argument("--quiet", action="store_true", help="no log lines and no progress bar")
    return p


def _run(args: argparse.Namespace) -> int:
    from hpcrobust.run import run_command

    return run_command(args.config, args.overrides, quiet=args.quiet)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            build_parser().print_help()
            return 2
        handler = {"run": _run}[args.command]
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
